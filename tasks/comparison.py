"""The comparison of every approach on the same held-out examples: intervals, paired differences, costs,
forgetting, regressions and the one-line recommendation (reports/metrics.json is its record)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tasks.inference import ScoreFile
from tasks.metrics import lower_is_better
from tasks.reporting import recommendation
from tasks.scoring import TaskMetrics, best, regressions
from tasks.statistics import Interval, paired_bootstrap


@dataclass(frozen=True)
class Comparison:
    metrics: list[str]
    single: dict[str, dict[str, Interval]]  # approach -> metric -> value with its interval
    gains: dict[str, dict[str, Interval]]  # baseline -> metric -> fine-tuned's improvement over it
    costs: dict[str, dict[str, float]]
    forgetting: dict[str, float]
    best_baseline: str
    regressions: list[dict[str, Any]]
    recommendation: str

    def record(self) -> dict[str, Any]:
        """reports/metrics.json: flat numbers per approach (what `dvc metrics diff` compares), then the rest."""
        result: dict[str, Any] = {
            a: {**{k: v for m in self.metrics for k, v in flat_interval(m, self.single[a][m]).items()},
                **self.costs[a]} for a in self.single}
        result["forgetting"] = self.forgetting
        result["comparisons"] = {f"finetuned_vs_{b}": {m: {**g.as_dict(), "better": g.better} for m, g in c.items()}
                                 for b, c in self.gains.items()}
        result["best_baseline"] = self.best_baseline
        result["recommendation"] = self.recommendation
        return result


def flat_interval(metric: str, interval: Interval) -> dict[str, float]:
    """rouge_l, rouge_l_ci_low, rouge_l_ci_high."""
    values = interval.as_dict()
    return {metric: values["value"], f"{metric}_ci_low": values["ci_low"], f"{metric}_ci_high": values["ci_high"]}


def forgetting_record(base_perplexity: float, finetuned_perplexity: float) -> dict[str, float]:
    """The relative perplexity rise on general-domain text, from the base to the fine-tuned model."""
    return {"base_perplexity": round(base_perplexity, 4), "finetuned_perplexity": round(finetuned_perplexity, 4),
            "relative_increase": round(finetuned_perplexity / base_perplexity - 1, 5)}


def compare(scores: ScoreFile, training_seconds: float, forgetting: dict[str, float], metric: str, samples: int,
            confidence: float, seed: int) -> Comparison:
    """Every approach against every other with paired-bootstrap intervals; the fine-tuned model against each
    baseline; the winner on `metric` (the promotion metric)."""
    values = TaskMetrics(scores.task, scores.approaches, scores.references())
    single, paired = paired_bootstrap(list(scores.approaches), values.functions(), len(scores.examples), samples,
                                      confidence, seed)
    baselines = [a for a in scores.approaches if a != "finetuned"]
    costs = {a: s.cost() for a, s in scores.approaches.items()}
    costs["finetuned"]["training_seconds"] = training_seconds
    best_baseline = best(baselines, metric, single)
    return Comparison(
        metrics=values.names, single=single,
        gains={b: {m: paired["finetuned", b][m].as_gain(lower_is_better(m)) for m in values.names} for b in baselines},
        costs=costs, forgetting=forgetting, best_baseline=best_baseline,
        regressions=regressions(values, metric, best_baseline, scores.examples),
        recommendation=recommendation(metric, single, paired, costs, confidence),
    )
