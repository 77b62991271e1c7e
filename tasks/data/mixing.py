"""The multi-task model's training set: every specialization's tokenized examples drawn in set proportions."""

from __future__ import annotations

import numpy as np
from datasets import Dataset, concatenate_datasets
from prefect import task
from prefect.cache_policies import NO_CACHE


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
