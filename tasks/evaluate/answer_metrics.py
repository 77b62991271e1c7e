"""How one generated answer compares with its reference: the metrics of tasks/core/metrics.py that score each answer
on its own. Evaluation averages them over the held-out examples (tasks/evaluate/scoring.py); GRPO trains on them as
rewards (tasks/train/rewards.py), so that training optimizes exactly what the report measures."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from jsonschema import Draft202012Validator

from tasks.formats.hermes import Answer, final_answer, parse

Texts = list[str]


def normalize_label(text: str) -> str:
    return " ".join(text.lower().strip().strip(".!").split())


def rouge_l(predictions: Texts, references: Texts) -> list[float]:
    """ROUGE-L F1 per example (Google's rouge-score, stemmed)."""
    # Imported on use: rouge-score loads NLTK (seconds: benchmarks/RESULTS.md), which promote mostly does not need.
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]


def exact_match(predictions: Texts, references: Texts) -> list[float]:
    return [float(p.strip() == r.strip()) for p, r in zip(predictions, references)]


def label_accuracy(predictions: Texts, references: Texts) -> list[float]:
    return [float(normalize_label(p) == normalize_label(r)) for p, r in zip(predictions, references)]


def answered_calls(predictions: Texts, references: Texts) -> list[tuple[Answer, Answer]]:
    return [(parse(p), parse(r)) for p, r in zip(predictions, references)]


def tool_selection(predictions: Texts, references: Texts) -> list[float]:
    """The functions called are the reference's (as a multiset, in any order); none when it answers in text."""
    return [float(sorted(map(str, (n for n, _ in p.calls))) == sorted(n for n, _ in r.calls))
            for p, r in answered_calls(predictions, references)]


def call_key(name: str | None, arguments: dict[str, Any] | None) -> str:
    return json.dumps([name, arguments], sort_keys=True)


def call_keys(answer: Answer) -> list[str]:
    return sorted(call_key(name, None if arguments is None else {k: normal(v) for k, v in arguments.items()})
                  for name, arguments in answer.calls)


def argument_exact(predictions: Texts, references: Texts) -> list[float]:
    """The calls are the reference's, each function with exactly its arguments (numbers compared as numbers)."""
    return [float(call_keys(p) == call_keys(r)) for p, r in answered_calls(predictions, references)]


def normal(value: Any) -> Any:
    """A JSON value with its numbers as floats: 69 and 69.0 are the same argument."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    return float(value)


def argument_match(predictions: Texts, references: Texts) -> list[float]:
    """Per argument: the share of the reference calls' arguments the answer gives the same value, each reference
    call matched with an unused call of the same function (1 for a text answer where one is expected, 0 for a
    call where none is)."""
    scores = []
    for p, r in answered_calls(predictions, references):
        if not r.calls:
            scores.append(float(not p.calls))
            continue
        unused, right, total = list(p.calls), 0, 0
        for name, arguments in r.calls:
            match = next((call for call in unused if call[0] == name and call[1] is not None), None)
            if match is not None:
                unused.remove(match)
            given = match[1] if match is not None and match[1] is not None else {}
            for key, value in (arguments or {}).items():
                total += 1
                right += int(key in given and normal(given[key]) == normal(value))
        scores.append(right / total if total else float(match is not None))
    return scores


def valid_calls(predictions: Texts, references: Texts) -> list[float]:
    """Every call the answer writes is JSON with a name and an arguments object (an answer without calls: 1)."""
    return [float(parse(p).valid_calls) for p in predictions]


def schema_valid(predictions: Texts, tools: list[list[dict[str, Any]]]) -> list[float]:
    """Every call the answer writes names one of the example's tools and its arguments validate against that
    tool's parameters (JSON schema); an answer without calls: 1."""
    scores = []
    for prediction, offered in zip(predictions, tools):
        schemas = {t["function"]["name"]: t["function"].get("parameters") or {} for t in offered}
        scores.append(float(all(name in schemas and arguments is not None and
                                Draft202012Validator(schemas[name]).is_valid(arguments)
                                for name, arguments in parse(prediction).calls)))
    return scores


def on_final_answers(metric: Callable[[Texts, Texts], list[float]]) -> Callable[[Texts, Texts], list[float]]:
    """A text metric scored on the answers without their reasoning traces (<think>...</think>)."""
    def scored(predictions: Texts, references: Texts) -> list[float]:
        return metric([final_answer(p) for p in predictions], [final_answer(r) for r in references])

    scored.__doc__ = metric.__doc__
    return scored


# Metrics that score each generated answer on its own: computed once, then only averaged over resamples.
PER_EXAMPLE: dict[str, Callable[[Texts, Texts], list[float]]] = {
    "rouge_l": on_final_answers(rouge_l), "exact_match": on_final_answers(exact_match),
    "accuracy": on_final_answers(label_accuracy), "tool_selection": tool_selection,
    "argument_exact": argument_exact, "argument_match": argument_match, "valid_calls": valid_calls,
}
