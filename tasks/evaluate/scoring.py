"""How each metric of tasks/core/metrics.py is computed, on any resample of the examples (for the paired bootstrap).

Only the stages that compare approaches (evaluate, promote) depend on this module: editing a metric re-runs them,
never the baselines' generation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import sacrebleu

from tasks.core.approaches import FINETUNED
from tasks.core.metrics import lower_is_better, task_metrics
from tasks.evaluate.answer_metrics import PER_EXAMPLE, Texts, normalize_label, on_final_answers, schema_valid
from tasks.evaluate.score_files import Scores
from tasks.evaluate.statistics import Interval, paired_bootstrap


def macro_f1(predictions: Texts, references: Texts) -> float:
    from sklearn.metrics import f1_score  # on use, like RougeScorer

    return float(f1_score([normalize_label(r) for r in references], [normalize_label(p) for p in predictions],
                          average="macro", zero_division=0))


# Metrics defined on a whole set of answers (no per-example score): recomputed on every resample.
CORPUS: dict[str, Callable[[Texts, Texts], float]] = {
    "chrf": on_final_answers(lambda p, r: float(sacrebleu.corpus_chrf(p, [r]).score)),
    "bleu": on_final_answers(lambda p, r: float(sacrebleu.corpus_bleu(p, [r]).score)),
    "macro_f1": on_final_answers(macro_f1),
}
# Metrics of each answer's tool calls against the tools its example offered (the ScoreFile records them).
WITH_TOOLS: dict[str, Callable[[Texts, list[list[dict[str, Any]]]], list[float]]] = {"schema_valid": schema_valid}
# Metrics of the reference tokens' log-likelihood (teacher forcing), from the summed NLL and token counts.
LIKELIHOOD: dict[str, Callable[[float], float]] = {"loss": lambda loss: loss, "perplexity": math.exp}
# Metrics of a preference pair, from its margin: the chosen answer's mean log-likelihood per token minus the
# rejected one's (per token, so that a longer answer is not penalized for its length).
PREFERENCE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "preference_accuracy": lambda margin: (margin > 0).astype(float), "preference_margin": lambda margin: margin,
}


def preference_margins(scores: Scores) -> np.ndarray:
    chosen = -np.asarray(scores.nll) / np.maximum(np.asarray(scores.target_tokens), 1)
    rejected = -np.asarray(scores.rejected_nll) / np.maximum(np.asarray(scores.rejected_tokens), 1)
    return chosen - rejected


class TaskMetrics:
    """The metrics of one task type, computable on any resample of the examples (for the bootstrap)."""

    def __init__(self, task: str, scores: dict[str, Scores], examples: list[dict[str, Any]],
                 only: str | None = None) -> None:
        """Every metric of the task, or `only` that one (per-example scores are computed here, up front), on the
        examples a ScoreFile records (their reference answers, and for tool calls the tools they offered)."""
        self.names = [only] if only else task_metrics(task)
        self.scores = scores
        self.references = references = [e.get("response", "") for e in examples]
        self.nll = {a: np.asarray(s.nll) for a, s in scores.items()}
        self.tokens = {a: np.asarray(s.target_tokens) for a, s in scores.items()}
        self.per_example = {(a, name): np.asarray(PER_EXAMPLE[name](s.predictions, references), dtype=float)
                            for a, s in scores.items() for name in self.names if name in PER_EXAMPLE}
        self.per_example.update({(a, name): PREFERENCE[name](preference_margins(s)) for a, s in scores.items()
                                 for name in self.names if name in PREFERENCE})
        offered = [e.get("tools", []) for e in examples]
        self.per_example.update({(a, name): np.asarray(WITH_TOOLS[name](s.predictions, offered), dtype=float)
                                 for a, s in scores.items() for name in self.names if name in WITH_TOOLS})

    def value(self, name: str, approach: str, index: np.ndarray) -> float:
        if name in LIKELIHOOD:
            return LIKELIHOOD[name](float(self.nll[approach][index].sum() / max(self.tokens[approach][index].sum(), 1)))
        if (approach, name) in self.per_example:
            return float(self.per_example[approach, name][index].mean())
        predictions = [self.scores[approach].predictions[i] for i in index]
        return CORPUS[name](predictions, [self.references[i] for i in index])

    def per_example_score(self, approach: str, name: str) -> np.ndarray | None:
        """Each example's score on `name`, higher is better; None for corpus-level metrics (BLEU, macro-F1)."""
        if name in LIKELIHOOD:
            return -self.nll[approach] / np.maximum(self.tokens[approach], 1)  # mean log-likelihood per token
        return self.per_example.get((approach, name))

    def functions(self) -> dict[str, Callable[[str, np.ndarray], float]]:
        return {name: (lambda a, i, name=name: self.value(name, a, i)) for name in self.names}


def one_against_other(task: str, one: Scores, other: Scores, examples: list[dict[str, Any]], metric: str,
                      samples: int, confidence: float, seed: int) -> tuple[Interval, Interval, Interval]:
    """`metric` for two models scored on the same examples, and the first one's gain over the other (positive:
    better, whichever way the metric points), with paired-bootstrap intervals."""
    pair = {"one": one, "other": other}
    values = TaskMetrics(task, pair, examples, only=metric)
    single, paired = paired_bootstrap(list(pair), {metric: values.functions()[metric]}, len(examples), samples,
                                      confidence, seed)
    return (single["one"][metric], single["other"][metric],
            paired["one", "other"][metric].as_gain(lower_is_better(metric)))


def best(approaches: list[str], metric: str, single: dict[str, dict[str, Interval]]) -> str:
    """The approach with the best point value of `metric`."""
    choose = min if lower_is_better(metric) else max
    return choose(approaches, key=lambda a: single[a][metric].value)


def regressions(values: TaskMetrics, metric: str, baseline: str, examples: list[dict[str, str]],
                limit: int = 5) -> list[dict[str, Any]]:
    """Examples where the fine-tuned model trails `baseline` the most on `metric`'s per-example score.

    For plain text (nothing generated) the per-example score is the mean log-likelihood per token, and the
    example is shown by its opening words instead of a question and answers.
    """
    ours = values.per_example_score(FINETUNED, metric)
    theirs = values.per_example_score(baseline, metric)
    if ours is None or theirs is None:
        return []
    worst = sorted(range(len(ours)), key=lambda i: ours[i] - theirs[i])[:limit]
    return [{"example": examples[i].get("prompt") or examples[i].get("text", "")[:120],
             "reference": examples[i].get("response"),
             FINETUNED: output(values.scores[FINETUNED], i), "finetuned_score": float(ours[i]),
             "baseline": baseline, "baseline_output": output(values.scores[baseline], i),
             "baseline_score": float(theirs[i])} for i in worst if ours[i] < theirs[i]]


def output(scores: Scores, index: int) -> str | None:
    """The approach's answer to example `index`; None when nothing was generated (plain text)."""
    return scores.predictions[index] if scores.predictions else None
