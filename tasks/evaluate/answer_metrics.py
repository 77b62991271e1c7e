"""How one generated answer compares with its reference: the metrics of tasks/core/metrics.py that score each answer
on its own. Evaluation averages them over the held-out examples (tasks/evaluate/scoring.py); GRPO trains on them as
rewards (tasks/train/rewards.py), so that training optimizes exactly what the report measures."""

from __future__ import annotations

from collections.abc import Callable

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


# Metrics that score each generated answer on its own: computed once, then only averaged over resamples.
PER_EXAMPLE: dict[str, Callable[[Texts, Texts], list[float]]] = {
    "rouge_l": rouge_l, "exact_match": exact_match, "accuracy": label_accuracy,
}
