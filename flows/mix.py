"""Stage mix: a multi-task model's training set, from the tokenized train splits of the specializations that
params.yaml's `multitask` names for it, in its proportions (finetune_multitask then trains on it)."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from datasets import load_from_disk
from prefect import flow

from flows.stage import run_stage, start_stage_run
from tasks.core.errors import UserError
from tasks.core.params import Params
from tasks.data.mixing import across_tasks, mixture
from tasks.data.tokenization import fingerprint, save_reproducibly


@dataclass(frozen=True)
class Paths:
    validated: Path  # one folder per specialization, each with train.parquet and eval.parquet
    tokenized: Path  # one folder per specialization, each with its train split (Arrow)
    out: Path  # train: the mixed training set; replay: the replay text (Arrow)
    stats: Path  # examples drawn from each specialization (a DVC metrics file)


@flow(name="mix", on_running=[start_stage_run])
def mix_flow(params: Params, paths: Paths) -> dict[str, int]:
    (model, weights), = params.multitask.items()  # the stage's own (flows/stage.py)
    parts = {name: load_from_disk(str(paths.tokenized / name / "train")) for name in weights}
    # Read from the data rather than the params, so that no other setting of a specialization re-runs this stage.
    preference = [name for name, part in parts.items() if "rejected_ids" in part.column_names]
    if preference:
        raise UserError(f"multitask.{model}: {', '.join(preference)} hold preference pairs, which supervised "
                        "multi-task training cannot learn from; leave them out of it")
    checked = params.validate_
    repeated = ([] if checked.near_duplicates == "off" else
                across_tasks(paths.validated, list(weights), checked.near_duplicate_similarity))
    if repeated and checked.near_duplicates == "refuse":
        raise UserError(
            f"multitask.{model}: {len(repeated)} held-out rows of one specialization repeat a training row of another "
            f"that this model learns (similarity >= {checked.near_duplicate_similarity}): "
            + "; ".join(f"{pair['eval']} ~ {pair['train']} ({pair['similarity']})" for pair in repeated[:3])
            + ". Remove them from the eval files, or set validate.near_duplicates: report")
    mixed, counts = mixture(parts, params.mix_shares(model), params.seed)
    # The same parts, weights and seed give the same bytes: a re-run leaves the multi-task training up to date.
    tag = fingerprint(counts, params.seed, {name: part._fingerprint for name, part in parts.items()})
    shutil.rmtree(paths.out, ignore_errors=True)
    with tempfile.TemporaryDirectory() as work:  # the drawn rows, written out of the tokenize stages' folders
        save_reproducibly(mixed.flatten_indices(cache_file_name=f"{work}/mixed.arrow"), tag, paths.out / "train")
    # The replay text, for finetune.replay_pct, as the first specialization's tokenize stage wrote it.
    shutil.copytree(paths.tokenized / next(iter(weights)) / "replay", paths.out / "replay")
    stats = {"examples": len(mixed), "drawn": counts,
             "available": {name: len(part) for name, part in parts.items()},
             "near_duplicates_across_tasks": repeated}
    paths.stats.parent.mkdir(parents=True, exist_ok=True)
    paths.stats.write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    return counts


if __name__ == "__main__":
    run_stage(mix_flow, Paths)
