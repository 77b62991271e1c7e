"""Paired bootstrap: a confidence interval for every metric and for every difference between approaches."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# A metric evaluated on a resample: (approach, example indices) -> value.
MetricFn = Callable[[str, np.ndarray], float]


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    @property
    def better(self) -> bool:
        """For a gain (positive = better): significantly better, the whole interval above zero."""
        return self.low > 0

    def as_gain(self, lower_is_better: bool) -> Interval:
        """This difference a - b, turned so that positive always means `a` is better."""
        return Interval(-self.value, -self.high, -self.low) if lower_is_better else self

    def as_dict(self) -> dict[str, float]:
        return {"value": round(self.value, 5), "ci_low": round(self.low, 5), "ci_high": round(self.high, 5)}


def paired_bootstrap(approaches: list[str], metrics: dict[str, MetricFn], examples: int, samples: int,
                     confidence: float, seed: int) -> tuple[dict[str, dict[str, Interval]],
                                                            dict[tuple[str, str], dict[str, Interval]]]:
    """Percentile intervals from `samples` resamples of the examples, the same resample for every approach.

    Returns the interval of each (approach, metric), and of each (a, b) difference a - b, which is paired:
    both sides are computed on the same resampled examples.
    """
    rng = np.random.default_rng(seed)
    everything = np.arange(examples)
    draws = {(a, m): np.empty(samples) for a in approaches for m in metrics}
    for s in range(samples):
        index = rng.integers(0, examples, examples)
        for approach in approaches:
            for name, metric in metrics.items():
                draws[approach, name][s] = metric(approach, index)
    tail = (1 - confidence) / 2 * 100

    def interval(point: float, values: np.ndarray) -> Interval:
        low, high = np.percentile(values, [tail, 100 - tail])
        return Interval(float(point), float(low), float(high))

    points = {(a, m): metrics[m](a, everything) for a in approaches for m in metrics}
    single = {a: {m: interval(points[a, m], draws[a, m]) for m in metrics} for a in approaches}
    paired = {
        (a, b): {m: interval(points[a, m] - points[b, m], draws[a, m] - draws[b, m]) for m in metrics}
        for a in approaches for b in approaches if a != b
    }
    return single, paired
