"""Which approach is recommended for this data: the one rule that the report states, the promotion ships and the
portfolio recommends per task.

The best approach is the one with the best value of the promotion metric. Another approach is *beaten* by it when
the best is better by at least `promote.min_relative_improvement` (relative to the other's value) AND the paired
bootstrap interval of the difference excludes zero; the approaches it does not beat are *tied* with it. The
recommendation is the cheapest of the tied, in the order of `SERVING_ORDER`: the base model as it is, then a fixed
prompt, then a retrieval index searched per request, then one shared adapter, then an adapter of the task's own, then
an adapter and a retrieval index. That order is what serving costs: no training before training, no index before an
index. Among approaches of one rank, the first listed wins (approaches are listed in that order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tasks.core.approaches import serving_rank
from tasks.core.metrics import lower_is_better
from tasks.evaluate.statistics import Interval


def relative_gain(gain: Interval, reference: float) -> float:
    """An improvement (positive = better) as a fraction of the reference approach's value."""
    return gain.value / abs(reference) if reference else (math.inf if gain.value > 0 else 0.0)


def beats(gain: Interval, reference: float, min_relative: float) -> bool:
    """Better by at least min_relative of the reference's value, with an interval that excludes zero."""
    return gain.better and relative_gain(gain, reference) >= min_relative


@dataclass(frozen=True)
class Decision:
    metric: str
    best: str
    runner_up: str
    margin: Interval  # the best's improvement over the runner-up
    tied: list[str]  # the best and every approach it does not beat, in the order given
    recommended: str

    def record(self) -> dict[str, Any]:
        return {"metric": self.metric, "best": self.best, "runner_up": self.runner_up,
                "margin": {**self.margin.as_dict(), "better": self.margin.better},
                "tied_with_best": self.tied, "recommended": self.recommended}


def decide(metric: str, single: dict[str, dict[str, Interval]],
           paired: dict[tuple[str, str], dict[str, Interval]], min_relative: float,
           contenders: list[str] | None = None) -> Decision:
    """The rule above over `contenders` (every approach of `single` by default)."""
    names = list(single) if contenders is None else contenders

    def gain(a: str, b: str) -> Interval:
        return paired[a, b][metric].as_gain(lower_is_better(metric))

    ranked = sorted(names, key=lambda a: single[a][metric].value, reverse=not lower_is_better(metric))
    winner, runner_up = ranked[0], ranked[1]
    tied = [a for a in names if a == winner or not beats(gain(winner, a), single[a][metric].value, min_relative)]
    return Decision(metric, winner, runner_up, gain(winner, runner_up), tied, min(tied, key=serving_rank))


def recommendation(decision: Decision, single: dict[str, dict[str, Interval]], costs: dict[str, dict[str, float]],
                   confidence: float, min_relative: float) -> str:
    """One line: the recommended approach and why, with the best's margin over the runner-up and its CI."""
    metric, winner, runner_up, gain = decision.metric, decision.best, decision.runner_up, decision.margin
    margin = (f"{metric} {single[winner][metric].value:.4g} vs {single[runner_up][metric].value:.4g} for "
              f"{runner_up} (improvement {gain.value:+.4g}, {confidence:.0%} CI [{gain.low:+.4g}, {gain.high:+.4g}])")
    chosen, others = decision.recommended, [a for a in decision.tied if a != decision.best]
    if not others:
        cost = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in costs[winner].items())
        return f"Recommendation: **{winner}** is best for this data: {margin}; cost: {cost}."
    rule = f"by {min_relative:.0%} with a CI excluding zero"
    if chosen == winner:
        return (f"Recommendation: **{winner}**, the best for this data and the cheapest to serve of those it does "
                f"not beat {rule} ({', '.join(others)}; {margin}): {trade_off(winner, others[0], costs)}.")
    return (f"Recommendation: **{chosen}**, the cheapest to serve of the approaches that the best, {winner}, does "
            f"not beat {rule} ({', '.join(others)}; {margin}): {trade_off(winner, chosen, costs)}.")


def trade_off(a: str, b: str, costs: dict[str, dict[str, float]]) -> str:
    """What each of two approaches costs, in the terms a user pays: training and prompt size per answer (in tokens:
    the same on every machine)."""
    parts = []
    for name in (a, b):
        training = costs[name].get("training_tokens")
        parts.append(f"{name} needs {'no training' if training is None else f'{training:,} tokens of training'} "
                     f"and {costs[name]['prompt_tokens_per_example']:g} prompt tokens per answer")
    return "; ".join(parts)
