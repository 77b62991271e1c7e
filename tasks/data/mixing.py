"""The multi-task model's training set: every specialization's tokenized examples drawn in set proportions, and
the check that none of their held-out rows is another one's training row."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from datasets import Dataset, concatenate_datasets
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.data.contamination import Placed, near_duplicates


def draw(size: int, count: int, rng: np.random.Generator) -> list[int]:
    """`count` indices of `size` examples: every example once per whole pass, then a random sample of them without
    repeats for the rest, so a share above the data's size repeats all examples evenly, and one below it keeps
    each at most once."""
    passes, rest = divmod(count, size)
    return [*np.tile(np.arange(size), passes).tolist(), *np.sort(rng.permutation(size)[:rest]).tolist()]


@task(cache_policy=NO_CACHE)
def mixture(parts: dict[str, Dataset], weights: dict[str, float], seed: int) -> tuple[Dataset, dict[str, int]]:
    """As many examples as all parts hold together, each part's share set by its weight (weights sum to 1);
    sampling proportions rather than concatenation, so a small task can be weighted up and a large one down. The
    trainer's sampler shuffles the result. Returns it and the number of examples drawn from each part."""
    total = sum(len(part) for part in parts.values())
    rng = np.random.default_rng(seed)
    counts = {name: round(total * weights[name]) for name in parts}
    drawn = [parts[name].select(draw(len(parts[name]), counts[name], rng)) for name in parts]
    return concatenate_datasets(drawn), counts


def held_out_keys(path: Path) -> Iterator[Placed]:
    """A validated split's rows as the near-duplicate check reads them: a conversation's first user message, or a
    text, with its row."""
    table = pq.read_table(path)
    if "messages" not in table.column_names:
        yield from ((f"row {i + 1}", text) for i, text in enumerate(table.column("text").to_pylist()))
        return
    for i, messages in enumerate(table.column("messages").to_pylist()):
        yield f"row {i + 1}", next(m["content"] for m in json.loads(messages) if m["role"] == "user")


@task(cache_policy=NO_CACHE)
def across_tasks(validated: Path, names: list[str], threshold: float) -> list[dict[str, Any]]:
    """Held-out rows of each specialization that repeat, or nearly repeat, a training row of another one the
    multi-task model also learns (each specialization's validate checked its own splits only): the model would be
    scored on rows it was trained on."""
    return [{"eval": f"{held} {pair.held_out}", "train": f"{taught} {pair.train}", "similarity": pair.similarity}
            for held in names for taught in names if taught != held
            for pair in near_duplicates(held_out_keys(validated / taught / "train.parquet"),
                                        held_out_keys(validated / held / "eval.parquet"), threshold, identical=True)]
