"""The comparison of every approach on the same held-out examples: intervals, paired differences, costs,
forgetting, regressions and the one-line recommendation (reports/metrics.json is its record)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.core.approaches import ADAPTED, BASELINES, FINETUNED, INIT_ADAPTER, SHIPPABLE
from tasks.core.metrics import lower_is_better
from tasks.core.params import TOOL_CALLING, PromoteParams
from tasks.data.tokenization import answered
from tasks.evaluate.answer_metrics import normalize_label
from tasks.evaluate.decision import Decision, decide, recommendation
from tasks.evaluate.score_files import ScoreFile, Scores
from tasks.evaluate.scoring import LIKELIHOOD, TaskMetrics, best, one_against_other, regressions
from tasks.evaluate.statistics import Interval, paired_bootstrap
from tasks.formats.hermes import final_answer, parse
from tasks.formats.registry import CONVERSATION, Shape

MAJORITY = "majority_class"  # the label baseline: always the most frequent training label


@dataclass(frozen=True)
class Comparison:
    metrics: list[str]
    single: dict[str, dict[str, Interval]]  # approach -> metric -> value with its interval
    gains: dict[str, dict[str, Interval]]  # baseline -> metric -> fine-tuned's improvement over it
    costs: dict[str, dict[str, float]]
    forgetting: dict[str, float]
    best_baseline: str
    regressions: list[dict[str, Any]]
    decision: Decision
    recommendation: str
    # Conversations: the fine-tuned model with and without the history before the last user turn, on `metric`.
    context_ablation: dict[str, Any] | None = None
    # Label tasks: every approach against always answering the most frequent training label, and its confusions.
    majority: dict[str, Any] | None = None
    # Tool calling: per approach, expected tool -> called tool -> count.
    tool_confusions: dict[str, dict[str, dict[str, int]]] | None = None
    # evaluate.judge: the fine-tuned model's win rate against each approach by an LLM judge (tasks/evaluate/judge.py).
    judge: dict[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        """reports/metrics.json: flat numbers per approach (what `dvc metrics diff` compares), then the rest."""
        result: dict[str, Any] = {
            a: {**{k: v for m in self.metrics for k, v in flat_interval(m, self.single[a][m]).items()},
                **self.costs[a]} for a in self.single}
        result["forgetting"] = self.forgetting
        result["comparisons"] = {f"finetuned_vs_{b}": {m: {**g.as_dict(), "better": g.better} for m, g in c.items()}
                                 for b, c in self.gains.items()}
        result["best_baseline"] = self.best_baseline
        result["decision"] = self.decision.record()
        if self.context_ablation is not None:
            result["context_ablation"] = self.context_ablation
        if self.majority is not None:
            result[MAJORITY] = self.majority
        if self.tool_confusions is not None:
            result["tool_confusions"] = self.tool_confusions
        if self.judge is not None:
            result["judge"] = self.judge
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
    with_history, without, gain = one_against_other(scores.task, scores.approaches[FINETUNED], without_history,
                                                    scores.examples, metric, samples, confidence, seed)
    return {"metric": metric, "with_history": with_history.as_dict(), "without_history": without.as_dict(),
            "history_gain": {**gain.as_dict(), "better": gain.better}}


def most_frequent_label(labels: list[str]) -> str:
    """The training label seen most often, counted as accuracy compares labels (case, spaces and a final period
    aside), in its first spelling; ties go to the first seen."""
    counts = Counter(normalize_label(label) for label in labels)
    spelling = {}
    for label in labels:
        spelling.setdefault(normalize_label(label), label)
    return spelling[max(counts, key=lambda label: counts[label])]


def constant_answer(label: str, count: int) -> Scores:
    """The majority-class baseline's scores: `label` answered to every one of `count` examples, at no cost."""
    return Scores(nll=[0.0] * count, target_tokens=[1] * count, prompt_tokens=[0] * count, predictions=[label] * count)


def majority_label(task: str, shape: Shape, train_file: Path) -> str | None:
    """For a label task (classification on conversations, whose last answers are the labels), the most frequent
    label of the validated training split; None for any other task."""
    if task != "classification" or shape != CONVERSATION:
        return None
    conversations = pd.read_parquet(train_file, columns=["messages"])["messages"]
    return most_frequent_label([final_answer(answered(json.loads(messages))) for messages in conversations])


OTHER_ANSWER = "(not a label)"


def counted(answers: list[str], expected: list[str]) -> dict[str, dict[str, int]]:
    """Expected -> answered -> count."""
    table: dict[str, Counter[str]] = {}
    for answer, wanted in zip(answers, expected):
        table.setdefault(wanted, Counter())[answer] += 1
    return {wanted: dict(counts.most_common()) for wanted, counts in sorted(table.items())}


def confusions(predictions: list[str], references: list[str]) -> dict[str, dict[str, int]]:
    """Reference label -> answered label -> count, labels normalized; answers that are no reference label are
    counted together, so a model that answers outside the label set shows without a column per stray answer."""
    references = [normalize_label(final_answer(reference)) for reference in references]  # after any trace
    answers = [normalize_label(final_answer(prediction)) for prediction in predictions]
    return counted([a if a in set(references) else OTHER_ANSWER for a in answers], references)


TEXT_ANSWER, BROKEN_CALL = "(no call)", "(unreadable call)"


def called(text: str) -> str:
    """The tools an answer calls, as one name ("a + b" for parallel calls), or that it calls none."""
    names = sorted(name or BROKEN_CALL for name, _ in parse(text).calls)
    return " + ".join(names) or TEXT_ANSWER


def tool_confusions(scores: ScoreFile) -> dict[str, dict[str, dict[str, int]]]:
    """Tool calling: per approach, expected tool -> called tool -> count."""
    expected = [called(reference) for reference in scores.references()]
    return {a: counted([called(p) for p in s.predictions], expected) for a, s in scores.approaches.items()}


def against_majority(scores: ScoreFile, label: str, samples: int, confidence: float, seed: int) -> dict[str, Any]:
    """Label tasks: each approach's label metrics against always answering `label` (the most frequent training
    label), with paired-bootstrap intervals of the difference, and each approach's confusions. An approach that is
    not better than that constant answer has learned nothing the label counts did not already say."""
    count = len(scores.examples)
    approaches = {**scores.approaches, MAJORITY: constant_answer(label, count)}
    functions = {name: fn for name, fn in TaskMetrics(scores.task, approaches, scores.examples).functions().items()
                 if name not in LIKELIHOOD}  # the constant answer has no likelihood to compare
    single, paired = paired_bootstrap(list(approaches), functions, count, samples, confidence, seed)
    return {
        "label": label,
        "scores": {name: single[MAJORITY][name].as_dict() for name in functions},
        "gains": {a: {name: {**paired[a, MAJORITY][name].as_dict(), "better": paired[a, MAJORITY][name].better}
                      for name in functions} for a in scores.approaches},
        "confusions": {a: confusions(s.predictions, scores.references()) for a, s in scores.approaches.items()},
    }


def compare(scores: ScoreFile, training_tokens: int, forgetting: dict[str, float], promote: PromoteParams,
            samples: int, confidence: float, seed: int, without_history: Scores | None = None,
            majority_label: str | None = None, judge: dict[str, Any] | None = None) -> Comparison:
    """Every approach against every other with paired-bootstrap intervals; the fine-tuned model against each
    baseline; the decision on the promotion metric; for conversations, the context ablation; for label tasks
    (`majority_label` given), every approach against always answering the most frequent training label; and the
    judge's win rates, when evaluate.judge produced them."""
    metric = promote.metric
    values = TaskMetrics(scores.task, scores.approaches, scores.examples)
    single, paired = paired_bootstrap(list(scores.approaches), values.functions(), len(scores.examples), samples,
                                      confidence, seed)
    baselines = [a for a in BASELINES if a in scores.approaches]
    against = baselines + [a for a in (INIT_ADAPTER,) if a in scores.approaches]  # what the fine-tuned model faces
    costs = {a: s.cost() for a, s in scores.approaches.items()}
    for trained in ADAPTED:
        if trained in costs:
            costs[trained]["training_tokens"] = training_tokens
    best_baseline = best(baselines, metric, single)
    decision = decide(metric, single, paired, promote.min_relative_improvement,
                      [a for a in scores.approaches if a in SHIPPABLE])
    return Comparison(
        metrics=values.names, single=single,
        gains={b: {m: paired[FINETUNED, b][m].as_gain(lower_is_better(m)) for m in values.names} for b in against},
        costs=costs, forgetting=forgetting, best_baseline=best_baseline,
        regressions=regressions(values, metric, best_baseline, scores.examples), decision=decision,
        recommendation=recommendation(decision, single, costs, confidence, promote.min_relative_improvement),
        context_ablation=(None if without_history is None else
                          context_ablation(scores, without_history, metric, samples, confidence, seed)),
        majority=(None if majority_label is None else
                  against_majority(scores, majority_label, samples, confidence, seed)),
        tool_confusions=tool_confusions(scores) if scores.task == TOOL_CALLING else None,
        judge=judge,
    )
