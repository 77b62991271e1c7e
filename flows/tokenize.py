"""Stage tokenize: turn the validated splits into token ids with the base model's chat template."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from prefect import flow
from transformers import AutoTokenizer

from flows.stage import run_stage, start_stage_run
from tasks.core.errors import UserError
from tasks.core.params import DataParams, Params, TokenizeParams
from tasks.data.tokenization import tokenize_file, tokenize_replay_text
from tasks.formats.registry import CONVERSATION, PAIR


@dataclass(frozen=True)
class Paths:
    base: Path  # the base model directory (its tokenizer and chat template)
    validated: Path  # train.parquet and eval.parquet
    out: Path  # Arrow datasets, one folder per split
    stats: Path  # token statistics (a DVC metrics file)


@flow(name="tokenize", on_running=[start_stage_run])
def tokenize_flow(data: DataParams, tokenize: TokenizeParams, paths: Paths) -> dict[str, dict[str, float]]:
    """Tokenize train and eval (in batches, one process per core) and the replay text; write Arrow datasets and
    their token statistics."""
    tokenizer = AutoTokenizer.from_pretrained(paths.base)
    stats = {}
    shutil.rmtree(paths.out, ignore_errors=True)
    for split in ("train", "eval"):
        stats[split] = tokenize_file(tokenizer, paths.validated / f"{split}.parquet", paths.out / split, data.shape,
                                     tokenize.system_prompt, tokenize.max_length, tokenize.train_on)
    # Tokenized whatever finetune.replay_pct is (a few hundred paragraphs), so that changing the share re-runs
    # training only.
    stats["replay"] = tokenize_replay_text(tokenizer, tokenize.replay_text, paths.out / "replay", tokenize.max_length)
    paths.stats.parent.mkdir(parents=True, exist_ok=True)
    paths.stats.write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    for split, counts in stats.items():
        if counts.get("dropped_pct", 0) > tokenize.max_dropped_pct:
            what = ("preference pairs ({pct}%) have prompts that leave no room for an answer" if data.shape == PAIR
                    else "conversations ({pct}%) have no assistant token left to learn from")
            raise UserError(f"{counts['dropped']} {split} {what.format(pct=counts['dropped_pct'])} within "
                            f"tokenize.max_length {tokenize.max_length}" + (" (even with their oldest turns dropped)"
                                                                           if data.shape == CONVERSATION else "")
                            + "; raise tokenize.max_length, shorten them, or raise tokenize.max_dropped_pct "
                            f"({tokenize.max_dropped_pct}) to train without them")
    return stats


def main(params: Params, paths: Paths) -> None:
    tokenize_flow(params.data, params.tokenize, paths)


if __name__ == "__main__":
    run_stage(main, Paths)
