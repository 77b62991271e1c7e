"""The metrics registry: every metric's name, direction and the evaluation tasks that report it.

This is the one declaration the params schema (which metric `promote.metric` may name), evaluation, the report and
promotion all read. How each metric is computed lives in tasks/evaluate/scoring.py under the same name (a test checks that
every metric declared here has its computation there). Adding a metric: one entry here, one function there.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    lower_is_better: bool
    tasks: tuple[str, ...]  # evaluation tasks (evaluate.task, or "text" for plain-text data) that report it
    description: str


LIKELIHOOD = ("free_text", "summarization", "translation", "classification", "tool_calling", "text")
METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("loss", True, LIKELIHOOD, "mean negative log-likelihood per reference token"),
    Metric("perplexity", True, LIKELIHOOD, "exp(loss)"),
    Metric("rouge_l", False, ("free_text", "summarization"), "ROUGE-L F1 of the greedy answer (rouge-score)"),
    Metric("chrf", False, ("translation",), "chrF of the greedy answers (sacrebleu, corpus level)"),
    Metric("bleu", False, ("translation",), "BLEU of the greedy answers (sacrebleu, corpus level)"),
    Metric("exact_match", False, ("classification",), "the answer equals the reference exactly"),
    Metric("accuracy", False, ("classification",), "the answer equals the reference label after normalizing case, "
                                                   "spaces and a final period"),
    Metric("macro_f1", False, ("classification",), "macro-averaged F1 over the labels (scikit-learn)"),
    Metric("tool_selection", False, ("tool_calling",), "the answer calls the reference's functions (as a multiset), "
                                                       "or none when the reference answers in text"),
    Metric("argument_exact", False, ("tool_calling",), "the answer's calls are the reference's, every argument equal"),
    Metric("argument_match", False, ("tool_calling",), "share of the reference calls' arguments given the same value "
                                                       "by a call of the same function"),
    Metric("valid_calls", False, ("tool_calling",), "every call written is JSON with a name and an arguments object"),
    Metric("schema_valid", False, ("tool_calling",), "every call names an offered tool and its arguments validate "
                                                     "against that tool's JSON schema"),
    Metric("preference_accuracy", False, ("preference",), "share of pairs where the chosen answer has the higher "
                                                          "mean log-likelihood per token"),
    Metric("preference_margin", False, ("preference",), "mean log-likelihood per token of the chosen answer minus "
                                                        "the rejected one's"),
)}


def task_metrics(task: str) -> list[str]:
    """The metrics an evaluation task reports, in registry order. Preference pairs are evaluated as
    "<task>+preference": the task's metrics on the chosen answers, then the preference ones."""
    parts = task.split("+")
    return [m.name for m in METRICS.values() if any(part in m.tasks for part in parts)]


def lower_is_better(metric: str) -> bool:
    return METRICS[metric].lower_is_better
