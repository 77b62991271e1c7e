"""The comparison of every approach on the same held-out examples: intervals, paired differences, costs,
forgetting, regressions and the one-line recommendation (reports/metrics.json is its record)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tasks.metrics import lower_is_better
from tasks.reporting import recommendation
from tasks.score_files import ScoreFile, Scores
from tasks.scoring import TaskMetrics, best, one_against_other, regressions
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
    # Conversations: the fine-tuned model with and without the history before the last user turn, on `metric`.
    context_ablation: dict[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        """reports/metrics.json: flat numbers per approach (what `dvc metrics diff` compares), then the rest."""
        result: dict[str, Any] = {
            a: {**{k: v for m in self.metrics for k, v in flat_interval(m, self.single[a][m]).items()},
                **self.costs[a]} for a in self.single}
        result["forgetting"] = self.forgetting
        result["comparisons"] = {f"finetuned_vs_{b}": {m: {**g.as_dict(), "better": g.better} for m, g in c.items()}
                                 for b, c in self.gains.items()}
        result["best_baseline"] = self.best_baseline
        if self.context_ablation is not None:
            result["context_ablation"] = self.context_ablation
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


def context_ablation(scores: ScoreFile, without_history: Scores, metric: str, samples: int, confidence: float,
                     seed: int) -> dict[str, Any]:
    """The fine-tuned model's `metric` on each held-out conversation as it is and with only its last user turn,
    and the paired difference (positive: the history helps), so that a specialist that ignores the conversation
    shows."""
    with_history, without, gain = one_against_other(scores.task, scores.approaches["finetuned"], without_history,
                                                    scores.references(), metric, samples, confidence, seed)
    return {"metric": metric, "with_history": with_history.as_dict(), "without_history": without.as_dict(),
            "history_gain": {**gain.as_dict(), "better": gain.better}}


def compare(scores: ScoreFile, training_seconds: float, forgetting: dict[str, float], metric: str, samples: int,
            confidence: float, seed: int, without_history: Scores | None = None) -> Comparison:
    """Every approach against every other with paired-bootstrap intervals; the fine-tuned model against each
    baseline; the winner on `metric` (the promotion metric); for conversations, the context ablation."""
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
        context_ablation=(None if without_history is None else
                          context_ablation(scores, without_history, metric, samples, confidence, seed)),
    )
