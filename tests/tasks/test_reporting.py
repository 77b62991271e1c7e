"""The report's verdicts and its one-line recommendation follow the intervals, not the point values."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from canonical import canonical

from tasks.core.approaches import INIT_ADAPTER
from tasks.core.params import PromoteParams
from tasks.evaluate.comparison import (
    against_majority,
    compare,
    confusions,
    forgetting_record,
    majority_label,
    most_frequent_label,
)
from tasks.evaluate.decision import decide, recommendation
from tasks.evaluate.reporting import majority_section, plot_chart, render_report, selection_note, verdict
from tasks.evaluate.score_files import ScoreFile, Scores
from tasks.evaluate.statistics import Interval
from tasks.formats.registry import CONVERSATION, PAIR

COSTS = {"retrieval": {"prompt_tokens_per_example": 184.5},
         "finetuned": {"prompt_tokens_per_example": 47.9, "training_tokens": 30000}}


def single(finetuned: float, retrieval: float) -> dict:
    return {"finetuned": {"rouge_l": Interval(finetuned, finetuned - 0.05, finetuned + 0.05)},
            "retrieval": {"rouge_l": Interval(retrieval, retrieval - 0.05, retrieval + 0.05)}}


def test_significant_winner_is_named() -> None:
    paired = {("finetuned", "retrieval"): {"rouge_l": Interval(0.1, 0.04, 0.16)},
              ("retrieval", "finetuned"): {"rouge_l": Interval(-0.1, -0.16, -0.04)}}
    scores = single(0.5, 0.4)
    line = recommendation(decide("rouge_l", scores, paired, 0.05), scores, COSTS, 0.95, 0.05)
    assert line.startswith("Recommendation: **finetuned** is best for this data: rouge_l 0.5 vs 0.4 for retrieval")
    assert "95% CI [+0.04, +0.16]" in line


def test_a_tie_goes_to_the_cheapest_with_the_trade_off() -> None:
    paired = {("finetuned", "retrieval"): {"rouge_l": Interval(0.02, -0.03, 0.07)},
              ("retrieval", "finetuned"): {"rouge_l": Interval(-0.02, -0.07, 0.03)}}
    scores = single(0.38, 0.36)
    line = recommendation(decide("rouge_l", scores, paired, 0.05), scores, COSTS, 0.95, 0.05)
    assert line.startswith("Recommendation: **retrieval**, the cheapest to serve of the approaches that the best, "
                           "finetuned, does not beat by 5% with a CI excluding zero (retrieval; rouge_l 0.38 vs 0.36")
    assert "retrieval needs no training and 184.5 prompt tokens per answer" in line
    assert "finetuned needs 30,000 tokens of training and 47.9 prompt tokens per answer" in line


def test_lower_is_better_metrics_flip_the_sign() -> None:
    gain = Interval(-3.0, -4.0, -2.0).as_gain(lower_is_better=True)  # candidate perplexity 3 lower
    assert (gain.value, gain.low, gain.high) == (3.0, 2.0, 4.0) and verdict(gain) == "better"
    assert verdict(Interval(0.1, -0.1, 0.3)) == "no significant difference"


def test_chart_is_a_png(tmp_path: Path) -> None:
    path = tmp_path / "chart.png"
    plot_chart(["loss", "rouge_l"], single(0.36, 0.38), str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_label_model_that_learned_only_the_label_counts_is_named() -> None:
    """The failure a user met: a classifier that answers the most frequent label almost always scores that
    label's share, and the report must say it is no better than answering it every time."""
    references = ["1"] * 8 + ["2"] * 3 + ["3"]
    examples = [{"prompt": f"How many letters in word {i}?", "response": r} for i, r in enumerate(references)]

    def answering(predictions: list[str]) -> Scores:
        return Scores(nll=[1.0] * 12, target_tokens=[1] * 12, prompt_tokens=[9] * 12, predictions=predictions)

    scores = ScoreFile("classification", examples, {"prompted": answering(list(references)),
                                                    "finetuned": answering(["1."] * 10 + ["2", "1"])})
    label = most_frequent_label(["1", "2", "1", "3", "1 "])
    assert label == "1"
    majority = against_majority(scores, label, 300, 0.95, 0)
    assert majority["scores"]["accuracy"]["value"] == round(8 / 12, 5)
    assert majority["gains"]["prompted"]["accuracy"]["better"]
    assert not any(g["better"] for g in majority["gains"]["finetuned"].values())
    assert majority["confusions"]["finetuned"] == {"1": {"1": 8}, "2": {"1": 2, "2": 1}, "3": {"1": 1}}
    section = "\n".join(majority_section(majority, 0.95))
    assert "- finetuned: exact_match" in section and 'not better than always answering "1"' in section
    assert "- prompted: exact_match" in section and "better on exact_match, accuracy, macro_f1" in section
    assert "| 2 | 2 | 1 |" in section  # finetuned: two of the three "2"s answered "1"
    assert confusions(["yes", "Maybe."], ["yes", "no"]) == {"no": {"(not a label)": 1}, "yes": {"yes": 1}}


def test_the_majority_label_is_read_for_label_tasks_only(tmp_path: Path) -> None:
    train = tmp_path / "train.parquet"
    canonical(pd.DataFrame({"prompt": ["a", "b", "c"], "response": ["os", "Logging.", "logging"]})).to_parquet(train)
    assert majority_label("classification", CONVERSATION, train) == "Logging."  # counted normalized, first spelling
    assert majority_label("free_text", CONVERSATION, train) is None
    assert majority_label("classification", PAIR, train) is None  # a pair's answers are no label


def test_the_adapter_training_started_from_is_compared_but_never_recommended() -> None:
    """GRPO or DPO from an SFT adapter: the report says what the new training added to it (the SFT model is an
    extra row, and the fine-tuned model's gain over it), and the decision is among what this run can ship."""
    references = ["os", "logging"] * 6
    examples = [{"prompt": f"callable {i}", "response": r} for i, r in enumerate(references)]

    def answering(predictions: list[str]) -> Scores:
        return Scores(nll=[1.0] * 12, target_tokens=[1] * 12, prompt_tokens=[9] * 12, predictions=predictions,
                      ended=[True] * 12, generated_tokens=24)

    approaches = {"generalist": answering(["sys"] * 12), "prompted": answering(["sys"] * 12),
                  "retrieval": answering(["os"] * 12), "finetuned": answering(references[:10] + ["sys", "sys"]),
                  "finetuned+retrieval": answering(references[:10] + ["sys", "sys"]),
                  INIT_ADAPTER: answering(list(references))}
    comparison = compare(ScoreFile("classification", examples, approaches), 1000, forgetting_record(10.0, 10.5),
                         PromoteParams(metric="accuracy"), 300, 0.95, 0)
    assert comparison.single[INIT_ADAPTER]["accuracy"].value == 1.0  # the best score, yet not a contender
    assert INIT_ADAPTER not in comparison.decision.tied and comparison.decision.best == "finetuned"
    assert comparison.gains[INIT_ADAPTER]["accuracy"].value == pytest.approx(-2 / 12)
    assert "finetuned_vs_init_adapter" in comparison.record()["comparisons"]
    report = render_report(comparison, 0.95, 12, "all", selection_note("test", 3))
    assert "## Fine-tuned against each baseline and the adapter it started from" in report
    assert "| init_adapter | " in report
