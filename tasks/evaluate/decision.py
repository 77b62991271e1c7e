"""Which approach is recommended for this data: the one rule the report states and the comparison records."""

from __future__ import annotations

from tasks.core.metrics import lower_is_better
from tasks.evaluate.statistics import Interval


def recommendation(metric: str, single: dict[str, dict[str, Interval]],
                   paired: dict[tuple[str, str], dict[str, Interval]], costs: dict[str, dict[str, float]],
                   confidence: float) -> str:
    """One line: the winner on `metric`, its margin over the runner-up with the CI, and its cost."""
    ranked = sorted(single, key=lambda a: single[a][metric].value, reverse=not lower_is_better(metric))
    winner, runner_up = ranked[0], ranked[1]
    gain = paired[winner, runner_up][metric].as_gain(lower_is_better(metric))
    cost = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in costs[winner].items())
    margin = (f"{metric} {single[winner][metric].value:.4g} vs {single[runner_up][metric].value:.4g} for "
              f"{runner_up} (improvement {gain.value:+.4g}, {confidence:.0%} CI [{gain.low:+.4g}, {gain.high:+.4g}])")
    if gain.better:
        return f"Recommendation: **{winner}** is best for this data: {margin}; cost: {cost}."
    return (f"Recommendation: **{winner}** and **{runner_up}** are statistically tied ({margin}); "
            f"choose on cost: {trade_off(winner, runner_up, costs)}.")


def trade_off(a: str, b: str, costs: dict[str, dict[str, float]]) -> str:
    """What each of two approaches costs, in the terms a user pays: training and prompt size per answer (in tokens:
    the same on every machine)."""
    parts = []
    for name in (a, b):
        training = costs[name].get("training_tokens")
        parts.append(f"{name} needs {'no training' if training is None else f'{training:,} tokens of training'} "
                     f"and {costs[name]['prompt_tokens_per_example']:g} prompt tokens per answer")
    return "; ".join(parts)
