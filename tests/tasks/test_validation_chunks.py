"""Validation in chunks reports exactly what validating each split whole reports: the same failed expectations,
counts and example rows (duplicates and leakage found across chunk boundaries), and the same result record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tasks.core.params import ValidateParams
from tasks.data.tables import read_table
from tasks.data.validation import row_checks, run_suites

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"
LIMITS = ValidateParams(min_chars=1, max_chars=400, min_examples=5)
CHECKS = row_checks(["prompt", "response"], LIMITS)


def comparable(report: dict[str, Any]) -> dict[str, Any]:
    """The result record without what differs between any two runs (run time, batch ids)."""
    splits = {}
    for split, result in report["splits"].items():
        splits[split] = {"success": result["success"], "statistics": result["statistics"],
                         "expectations": [{**e, "kwargs": {k: v for k, v in e["kwargs"].items() if k != "batch_id"}}
                                          for e in result["expectations"]]}
    return {"success": report["success"], "splits": splits}


@pytest.fixture(scope="module")
def faulty() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train with a null, a blank answer, PII, and a duplicate and a leaked eval prompt far from their twins."""
    train = read_table.fn(DEMO / "train.jsonl").head(60).reset_index(drop=True)
    evaluation = read_table.fn(DEMO / "eval.jsonl").head(12).reset_index(drop=True)
    train.loc[3, "prompt"] = None
    train.loc[17, "response"] = "  "
    train.loc[29, "response"] = "Mail jane.doe@example.org."
    train = pd.concat([train, train.iloc[[2]], evaluation.iloc[[7]]], ignore_index=True)
    return train, evaluation


def test_chunked_validation_reports_what_whole_validation_reports(tmp_path: Path, faulty) -> None:
    train, evaluation = faulty
    whole_report, whole = run_suites.fn(train, evaluation, CHECKS, LIMITS, tmp_path / "whole", chunk_rows=10**6)
    chunked_report, chunked = run_suites.fn(train, evaluation, CHECKS, LIMITS, tmp_path / "chunked", chunk_rows=7)
    lines = [f.line() for f in whole]
    assert [f.line() for f in chunked] == lines
    assert comparable(chunked_report) == comparable(whole_report)
    assert any("[train] expect_compound_columns_to_be_unique(prompt,response)" in line
               and "row 3 " in line and "row 61 " in line for line in lines), lines
    assert any("[eval] expect_column_values_to_not_be_in_set(prompt)" in line and "row 8 " in line
               for line in lines), lines
    assert any("expect_column_values_to_not_be_null(prompt)" in line and "row 4 " in line for line in lines)
    assert (tmp_path / "chunked" / "index.html").is_file()

    # The same splits as files, read 9 rows at a time, as the stage reads them.
    paths = {}
    for name, frame in (("train", train), ("eval", evaluation)):
        paths[name] = tmp_path / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict("records")), encoding="utf-8")
    _, from_files = run_suites.fn(paths["train"], paths["eval"], CHECKS, LIMITS, tmp_path / "files", chunk_rows=9)
    assert [f.line() for f in from_files] == lines
