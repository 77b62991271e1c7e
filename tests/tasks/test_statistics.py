"""Paired bootstrap intervals: they cover the truth, and a difference is 'better' only when it excludes zero."""

from __future__ import annotations

import numpy as np

from tasks.evaluate.statistics import paired_bootstrap


def mean_of(values: dict[str, np.ndarray]):
    return {"score": lambda approach, index: float(values[approach][index].mean())}


def test_interval_contains_the_point_and_is_reproducible() -> None:
    rng = np.random.default_rng(1)
    values = {"a": rng.normal(0.5, 0.1, 200)}
    single, _ = paired_bootstrap(["a"], mean_of(values), 200, 500, 0.95, seed=3)
    interval = single["a"]["score"]
    assert interval.low < interval.value < interval.high
    assert interval.value == values["a"].mean()
    assert interval.low > 0.47 and interval.high < 0.53  # about ±2 standard errors (0.007) around 0.5
    again, _ = paired_bootstrap(["a"], mean_of(values), 200, 500, 0.95, seed=3)
    assert again["a"]["score"] == interval


def test_pairing_detects_a_small_consistent_gain() -> None:
    rng = np.random.default_rng(2)
    base = rng.normal(0.5, 0.3, 60)  # noisy per example, so unpaired intervals overlap
    values = {"b": base, "a": base + 0.02}
    single, paired = paired_bootstrap(["a", "b"], mean_of(values), 60, 500, 0.95, seed=0)
    assert single["a"]["score"].low < single["b"]["score"].high  # the two intervals overlap...
    assert paired["a", "b"]["score"].better  # ...but the paired difference is above zero
    assert paired["a", "b"]["score"].value == 0.02 or abs(paired["a", "b"]["score"].value - 0.02) < 1e-12


def test_noise_is_not_called_a_difference() -> None:
    rng = np.random.default_rng(4)
    values = {"a": rng.normal(0.5, 0.3, 60), "b": rng.normal(0.5, 0.3, 60)}
    _, paired = paired_bootstrap(["a", "b"], mean_of(values), 60, 500, 0.95, seed=0)
    assert not paired["a", "b"]["score"].better and not paired["b", "a"]["score"].better
