"""Near-duplicate contamination: paraphrased held-out rows are found with both places named, exact repeats stay the
exact check's, and LSH misses no pair that comparing every pair finds."""

from __future__ import annotations

import json
from itertools import product
from pathlib import Path

import pandas as pd
import pytest

from tasks.core.params import ValidateParams
from tasks.data.contamination import jaccard, near_duplicates, shingles
from tasks.data.validation import row_checks, run_suites

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"
PORTFOLIO = DEMO.parent / "portfolio" / "classification"


def rows(split: str, count: int) -> list[dict[str, str]]:
    return [json.loads(line) for line in (DEMO / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[:count]]


def placed(texts: list[str]) -> list[tuple[str, str]]:
    return [(f"row {i + 1}", text) for i, text in enumerate(texts)]


def test_a_reworded_question_is_found_and_an_other_question_is_not() -> None:
    question = "What does `logging.Formatter.formatTime(record, datefmt=None)` do?"
    train = ["What exactly does `logging.Formatter.formatTime(record, datefmt=None)` do?",  # a word added
             "what does LOGGING.Formatter.formatTime(record, datefmt=None) do",  # case and punctuation
             question,  # the same text: the exact check's to refuse, not listed twice
             "What does `logging.Formatter.format(record)` do?"]  # another method
    pairs = near_duplicates(placed(train), [("row 9", question)], 0.75)
    assert [(p.held_out, p.train) for p in pairs] == [("row 9", "row 2"), ("row 9", "row 1")]
    assert pairs[0].similarity == 1.0 and 0.75 <= pairs[1].similarity < 1.0
    assert pairs[1].train_text == train[0] and pairs[1].held_out_text == question


def test_lsh_finds_every_pair_that_comparing_all_pairs_finds() -> None:
    # Docstring summaries of the demo portfolio: many pairs lie just above and below the thresholds (tuned at the
    # reporting threshold, or at 0.8 of it, LSH missed some of them).
    held, train = ([json.loads(line)["prompt"] for line in (PORTFOLIO / f"{split}.jsonl").read_text().splitlines()]
                   for split in ("eval", "train"))
    for threshold in (0.5, 0.6, 0.7):
        every = {(h, t) for (h, a), (t, b) in product(enumerate(held), enumerate(train))
                 if a != b and jaccard(shingles(a), shingles(b)) >= threshold}
        found = {(int(p.held_out.split()[1]) - 1, int(p.train.split()[1]) - 1)
                 for p in near_duplicates(placed(train), placed(held), threshold)}
        assert found == every and every, threshold


@pytest.mark.parametrize("action", ["refuse", "report", "off"])
def test_validation_refuses_reports_or_skips_near_duplicates(tmp_path: Path, action: str) -> None:
    limits = ValidateParams(min_examples=5, near_duplicates=action)
    held = pd.DataFrame(rows("eval", 10))
    train = pd.DataFrame(rows("train", 60) + [{"prompt": held.prompt[3].replace("What does", "What exactly does"),
                                                "response": held.response[3]}])
    report, failures = run_suites.fn(train, held, row_checks(["prompt", "response"], limits), limits, tmp_path)
    if action == "off":
        assert "near_duplicates" not in report and not failures
        return
    near = report["near_duplicates"]
    assert near["count"] == 1 and near["pairs"][0]["eval"] == "row 4" and near["pairs"][0]["train"] == "row 61"
    assert report["success"] is (action == "report")
    assert [failure.expectation for failure in failures] == ([] if action == "report" else ["near_duplicates(prompt)"])
    if action == "refuse":
        assert "eval row 4 ~ train row 61" in failures[0].line()
        assert "validate.near_duplicates: report" in failures[0].line()


def test_an_exact_repeat_is_still_refused_by_the_exact_check(tmp_path: Path) -> None:
    limits = ValidateParams(min_examples=5)
    held = pd.DataFrame(rows("eval", 10))
    train = pd.DataFrame(rows("train", 60) + [held.iloc[3].to_dict()])
    report, failures = run_suites.fn(train, held, row_checks(["prompt", "response"], limits), limits, tmp_path)
    assert [f.expectation for f in failures] == ["expect_column_values_to_not_be_in_set(prompt)"]
    assert report["near_duplicates"]["count"] == 0
