"""The multi-task mixture: each part's share of the examples is its weight, drawn reproducibly."""

from __future__ import annotations

import numpy as np
from datasets import Dataset

from tasks.data.mixing import draw, mixture


def test_draw_repeats_whole_passes_then_samples_without_repeats() -> None:
    picks = draw(4, 10, np.random.default_rng(0))
    assert picks[:8] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert len(set(picks[8:])) == 2 and set(picks[8:]) <= {0, 1, 2, 3}
    assert len(set(draw(100, 30, np.random.default_rng(0)))) == 30  # below the size: no example twice


def test_mixture_draws_each_share_of_the_total_reproducibly() -> None:
    parts = {"a": Dataset.from_dict({"x": list(range(30))}), "b": Dataset.from_dict({"x": list(range(100, 190))})}
    mixed, counts = mixture.fn(parts, {"a": 0.5, "b": 0.5}, seed=1)
    assert counts == {"a": 60, "b": 60} and len(mixed) == 120  # as many as both hold: a is repeated, b sampled
    rows = mixed["x"]
    assert sorted(rows[:60]) == sorted(list(range(30)) * 2)
    assert len(set(rows[60:])) == 60 and set(rows[60:]) <= set(range(100, 190))
    assert mixture.fn(parts, {"a": 0.5, "b": 0.5}, seed=1)[0]["x"] == rows
    assert mixture.fn(parts, {"a": 0.5, "b": 0.5}, seed=2)[0]["x"] != rows
