"""One decision rule: the report, the promotion and the portfolio name the same approach for the same scores.

The made-up scores are the case where the three rules of earlier versions disagreed: the fine-tuned model answers
6 more of 400 examples right than retrieval, and never one fewer, so its interval excludes zero, but by 3%, under
promote.min_relative_improvement (5%). The report used to name it best (interval only), the promotion refused it
(margin), and the portfolio recommended it (interval only)."""

from __future__ import annotations

import pytest

from tasks.core.params import PromoteParams
from tasks.evaluate.comparison import compare
from tasks.evaluate.decision import decide
from tasks.evaluate.portfolio import Column, column_record
from tasks.evaluate.score_files import ScoreFile, Scores
from tasks.evaluate.statistics import Interval
from tasks.release.promotion import candidate_of

LABELS = ["os", "logging", "socket", "zipfile"]
REFERENCES = [LABELS[i % 4] for i in range(400)]
EXAMPLES = [{"prompt": f"q{i}", "response": r} for i, r in enumerate(REFERENCES)]
PROMOTE = PromoteParams(metric="accuracy")


def answers(correct: int) -> Scores:
    """The first `correct` examples answered right, the rest with a label that is never the reference."""
    predictions = REFERENCES[:correct] + ["tarfile"] * (len(REFERENCES) - correct)
    return Scores(nll=[1.0] * 400, target_tokens=[1] * 400, prompt_tokens=[20] * 400, predictions=predictions)


SCORES = {"generalist": answers(40), "prompted": answers(120), "retrieval": answers(200), "finetuned": answers(206)}


def test_report_promotion_and_portfolio_recommend_the_same_approach() -> None:
    comparison = compare(ScoreFile("classification", EXAMPLES, SCORES), 5000,
                         {"relative_increase": 0.0}, PROMOTE, 400, 0.95, 0)
    margin = comparison.decision.margin
    assert comparison.decision.best == "finetuned" and margin.better  # significant: the old report's winner
    assert margin.value / 0.5 < PROMOTE.min_relative_improvement  # but under the margin
    assert comparison.decision.tied == ["retrieval", "finetuned"]
    record = comparison.record()
    assert record["decision"]["recommended"] == "retrieval"
    assert comparison.recommendation.startswith(
        "Recommendation: **retrieval**, the cheapest to serve of the approaches that the best, finetuned, does not "
        "beat by 5% with a CI excluding zero (retrieval; accuracy 0.515 vs 0.5 for retrieval")
    assert candidate_of(record, PROMOTE) == "retrieval"  # what the promote stage ships
    portfolio = column_record(
        Column("a", "accuracy", ScoreFile("classification", EXAMPLES, {
            **SCORES, "specialist:a": SCORES["finetuned"], "multitask": answers(100)}), None),
        {"specialist:a": 5000, "multitask": 9000}, PROMOTE.min_relative_improvement, 400, 0.95, 0)
    assert portfolio["recommended"] == "retrieval" and portfolio["best"] in ("finetuned", "specialist:a")


def single(values: dict[str, float]) -> dict[str, dict[str, Interval]]:
    return {a: {"accuracy": Interval(v, v - 0.05, v + 0.05)} for a, v in values.items()}


def paired(values: dict[str, float], spread: float) -> dict[tuple[str, str], dict[str, Interval]]:
    return {(a, b): {"accuracy": Interval(values[a] - values[b], values[a] - values[b] - spread,
                                          values[a] - values[b] + spread)} for a in values for b in values}


@pytest.mark.parametrize(("spread", "tied", "recommended"), [
    (0.01, ["finetuned+retrieval"], "finetuned+retrieval"),  # beats everything: the best is recommended
    (0.15, ["retrieval", "finetuned", "finetuned+retrieval"], "retrieval"),  # tied: no training beats training
    (0.50, ["generalist", "prompted", "retrieval", "finetuned", "finetuned+retrieval"], "generalist"),
])
def test_the_cheapest_of_those_tied_with_the_best_is_recommended(spread: float, tied: list[str],
                                                                 recommended: str) -> None:
    values = {"generalist": 0.40, "prompted": 0.50, "retrieval": 0.70, "finetuned": 0.75, "finetuned+retrieval": 0.80}
    decision = decide("accuracy", single(values), paired(values, spread), 0.05)
    assert (decision.best, decision.runner_up) == ("finetuned+retrieval", "finetuned")
    assert (decision.tied, decision.recommended) == (tied, recommended)


def test_lower_is_better_metrics_rank_the_other_way() -> None:
    values = {"generalist": 30.0, "finetuned": 10.0}
    intervals = {a: {"perplexity": Interval(v, v, v)} for a, v in values.items()}
    pairs = {(a, b): {"perplexity": Interval(values[a] - values[b], values[a] - values[b] - 1,
                                             values[a] - values[b] + 1)} for a in values for b in values}
    assert decide("perplexity", intervals, pairs, 0.05).recommended == "finetuned"
