"""The Great Expectations suite: clean data passes; each kind of bad data is caught and named."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tasks.core.errors import UserError
from tasks.core.params import Columns, DataParams, ValidateParams
from tasks.data.tables import read_table
from tasks.data.validation import row_checks, run_suites
from tasks.formats.registry import FORMATS, PAIR, TEXT, format_of

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"
LIMITS = ValidateParams(min_chars=1, max_chars=400, min_examples=5)
CHECKS = row_checks(["prompt", "response"], LIMITS)


def demo(split: str, rows: int) -> pd.DataFrame:
    return read_table.fn(DEMO / f"{split}.jsonl").head(rows).reset_index(drop=True)


def failed(train: pd.DataFrame, evaluation: pd.DataFrame, tmp_path: Path) -> list[str]:
    report, failures = run_suites.fn(train, evaluation, CHECKS, LIMITS, tmp_path / "docs")
    assert report["success"] is (not failures)
    return [f.line() for f in failures]


def test_demo_data_passes_and_renders_data_docs(tmp_path: Path) -> None:
    assert failed(demo("train", 200), demo("eval", 30), tmp_path) == []
    assert (tmp_path / "docs" / "index.html").is_file()


@pytest.mark.parametrize(("change", "expectation", "row"), [
    (lambda t: t.assign(prompt=t.prompt.where(t.index != 3, None)), "expect_column_values_to_not_be_null(prompt)", 4),
    (lambda t: t.assign(response=t.response.where(t.index != 7, "   ")),
     "expect_column_values_to_not_match_regex(response)", 8),
    (lambda t: pd.concat([t, t.iloc[[2]]], ignore_index=True),
     "expect_compound_columns_to_be_unique(prompt,response)", 3),
    (lambda t: t.assign(response=t.response.where(t.index != 1, "x" * 500)),
     "expect_column_value_lengths_to_be_between(response)", 2),
    (lambda t: t.assign(prompt=t.prompt.where(t.index != 5, 42)), "expect_column_values_to_be_of_type(prompt)", 6),
    (lambda t: t.drop(columns=["response"]), "expect_column_to_exist(response)", None),
])
def test_bad_train_rows_are_named(tmp_path: Path, change, expectation: str, row: int | None) -> None:
    lines = failed(change(demo("train", 50)), demo("eval", 10), tmp_path)
    assert len(lines) == 1, lines
    assert f"[train] {expectation}" in lines[0]
    if row is not None:
        assert f"row {row} " in lines[0]


def test_a_preference_pair_with_the_same_answer_twice_is_named(tmp_path: Path) -> None:
    pairs = SAMPLES["preference"]("train", 30).rename(columns={"question": "prompt", "better": "chosen",
                                                               "worse": "rejected"})
    pairs.loc[6, "rejected"] = pairs.loc[6, "chosen"] + " "
    report, failures = run_suites.fn(pairs, SAMPLES["preference"]("eval", 5).rename(
        columns={"question": "prompt", "better": "chosen", "worse": "rejected"}),
        row_checks(["prompt", "chosen", "rejected"], LIMITS, answers_differ=("chosen", "rejected")), LIMITS,
        tmp_path / "docs")
    lines = [f.line() for f in failures]
    assert len(lines) == 1 and "[train] expect_column_values_to_be_in_set(chosen_equals_rejected): the chosen and " \
        "rejected answers differ (1 rows: row 7 " in lines[0], lines


def test_eval_example_leaked_into_train_is_caught(tmp_path: Path) -> None:
    evaluation = demo("eval", 10)
    train = pd.concat([demo("train", 50), evaluation.iloc[[4]]], ignore_index=True)
    lines = failed(train, evaluation, tmp_path)
    assert len(lines) == 1 and "[eval] expect_column_values_to_not_be_in_set(prompt)" in lines[0]
    assert "row 5 " in lines[0] and "leaks into train" in lines[0]


def test_too_few_examples(tmp_path: Path) -> None:
    lines = failed(demo("train", 3), demo("eval", 3), tmp_path)
    assert any("expect_table_row_count_to_be_between" in line for line in lines)


def test_unreadable_files_get_one_clear_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c",\n', encoding="utf-8")
    with pytest.raises(UserError, match="line 2 is not valid JSON"):
        read_table.fn(broken)
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("prompt,response\ncaf\xe9,x\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        read_table.fn(latin1)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UserError, match="has no rows"):
        read_table.fn(empty)
    with pytest.raises(UserError, match="file not found"):
        read_table.fn(tmp_path / "missing.parquet")
    (tmp_path / "data.txt").write_text("prompt response\n")
    with pytest.raises(UserError, match="unsupported file type"):
        read_table.fn(tmp_path / "data.txt")


def test_csv_and_parquet_read_like_jsonl(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (DEMO / "eval.jsonl").read_text().splitlines()[:5]]
    pd.DataFrame(rows).to_csv(tmp_path / "data.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "data.parquet")
    for name in ("data.csv", "data.parquet"):
        assert read_table.fn(tmp_path / name).to_dict("records") == rows


GENERAL = DEMO.parent / "general" / "reference.jsonl"
# Clean data in each format the schema offers, under the user's own column names; a new format must add its own.
SAMPLES = {
    "instruction": lambda split, rows: demo(split, rows).rename(columns={"prompt": "question", "response": "answer"}),
    "text": lambda split, rows: read_table.fn(GENERAL).rename(columns={"text": "body"}).iloc[
        slice(0, rows) if split == "train" else slice(200, 200 + rows)].reset_index(drop=True),
    "chat": lambda split, rows: pd.read_json(DEMO.parent / "demo_chat" / f"{split}.jsonl", lines=True).head(rows)
    .rename(columns={"messages": "dialog"}),
    "preference": lambda split, rows: pd.read_json(DEMO.parent / "demo_preference" / f"{split}.jsonl", lines=True)
    .head(rows).rename(columns={"prompt": "question", "chosen": "better", "rejected": "worse"}),
    "tools": lambda split, rows: pd.read_json(DEMO.parent / "demo_tools" / f"{split}.jsonl", lines=True).head(rows)
    .rename(columns={"messages": "dialog"}),
}


@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("allowed", [None, ["a", "b"]])
def test_every_format_builds_its_suite_and_clean_data_passes(tmp_path: Path, data_format: str,
                                                           allowed: list[str] | None) -> None:
    """A format changes the columns every expectation is built from; each must build (GX validates its
    arguments) and clean data must pass, then map to its canonical shape. With a label set, only the label column of
    a format that has one is checked against it, so the clean data fail exactly that expectation."""
    data = DataParams(format=data_format, train=Path("t.jsonl"), eval=Path("e.jsonl"),
                      columns=Columns(prompt="question", response="answer", text="body", messages="dialog",
                                      chosen="better", rejected="worse"))
    reader = format_of(data_format)
    limits = ValidateParams(min_chars=1, max_chars=4000, min_examples=5, allowed_responses=allowed)
    train = SAMPLES[data_format]("train", 40)
    report, failures = run_suites.fn(train, SAMPLES[data_format]("eval", 5), reader.checks(data, limits), limits,
                                     tmp_path / "docs")
    lines = [f.line() for f in failures]
    if allowed and len(reader.columns(data)) > 1:
        assert lines and all("expect_column_values_to_be_in_set" in line for line in lines), lines
    else:
        assert lines == [] and report["success"]
    written = reader.canonical(train, data)
    shape = FORMATS[data_format].shape
    assert list(written.columns) == {TEXT: ["text"], PAIR: ["messages", "rejected"]}.get(shape, ["messages"])
    assert len(written) == len(train)
    if shape != TEXT:  # conversations that end with the answer
        assert all(json.loads(messages)[-1]["role"] == "assistant" for messages in written["messages"])


def test_reports_redact_what_the_pii_check_refuses_and_data_docs_escape_markup(tmp_path: Path) -> None:
    train = demo("train", 50)
    train.loc[3, "response"] = "Write to jane.doe@example.org or call 555-123-4567 for access."
    train.loc[4, "response"] = "<script>alert(1)</script>" + "x" * 5000  # too long: its markup must stay text
    report, failures = run_suites.fn(train, demo("eval", 10), CHECKS, LIMITS, tmp_path / "docs")
    assert not report["success"]
    written = json.dumps(report) + "\n".join(f.line() for f in failures)
    docs = "\n".join(page.read_text(encoding="utf-8") for page in (tmp_path / "docs").rglob("*.html"))
    for secret in ("jane.doe@example.org", "555-123-4567"):
        assert secret not in written and secret not in docs
    assert "Write to [redacted] or call [redacted] for access." in written
    assert "row 4" in written  # the row is still named
    assert "<script>alert(1)</script>" not in docs and "&lt;script&gt;alert(1)&lt;/script&gt;" in docs
    assert "x" * 1000 not in written and "(5,025 characters)" in written  # the long value is cut
