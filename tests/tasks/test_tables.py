"""Reading files in chunks: the same table as reading them whole, rows numbered by their place in the file, and
every error named as before wherever in the file it sits."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tasks.core.errors import UserError
from tasks.data.tables import read_table, table_chunks

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"


def rows(count: int) -> list[dict[str, str]]:
    return [json.loads(line) for line in (DEMO / "train.jsonl").read_text().splitlines()[:count]]


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet"])
def test_chunks_are_the_whole_table_numbered_by_row(tmp_path: Path, suffix: str) -> None:
    expected = pd.DataFrame(rows(23), dtype=object)
    path = tmp_path / f"data.{suffix}"
    if suffix == "jsonl":  # blank lines are skipped and not counted
        path.write_text("\n".join(json.dumps(r) + ("\n" if i == 5 else "") for i, r in enumerate(rows(23))) + "\n")
    else:
        getattr(expected, f"to_{suffix}")(path, index=False)
    chunks = list(table_chunks(path, rows=5))
    assert [len(c) for c in chunks] == [5, 5, 5, 5, 3]
    assert [c.index[0] for c in chunks] == [0, 5, 10, 15, 20]
    whole = pd.concat(chunks)
    assert whole.to_dict("records") == expected.to_dict("records")
    assert list(whole.index) == list(range(23))
    assert read_table.fn(path).to_dict("records") == expected.to_dict("records")


def test_errors_deep_in_the_file_name_their_line(tmp_path: Path) -> None:
    good = [json.dumps(r) for r in rows(12)]
    cases = {
        "broken.jsonl": (good[:9] + ['{"prompt": "a",'] + good[9:], "line 10 is not valid JSON"),
        "array.jsonl": (good[:11] + ["[1, 2]"], "line 12 is a JSON list, expected an object"),
        "mixed.jsonl": (good[:8] + ['{"question": "q", "answer": "a"}'],
                        "line 9 has keys ['answer', 'question'] but the first line has ['prompt', 'response']"),
    }
    for name, (lines, message) in cases.items():
        (tmp_path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
            list(table_chunks(tmp_path / name, rows=4))
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(("\n".join(good) + '\n{"prompt": "caf\xe9", "response": "x"}\n').encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        list(table_chunks(latin1, rows=4))


def test_nothing_to_read_is_named_before_any_row(tmp_path: Path) -> None:
    (tmp_path / "blank.jsonl").write_text("\n\n  \n")
    with pytest.raises(UserError, match="has no rows"):
        next(table_chunks(tmp_path / "blank.jsonl"))
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(rows(1)[0]).encode())
    with pytest.raises(UserError, match="byte-order mark"):
        next(table_chunks(tmp_path / "bom.jsonl"))
    with pytest.raises(UserError, match="file not found"):
        next(table_chunks(tmp_path / "missing.jsonl"))


def test_an_overlong_line_is_refused_without_reading_it_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    monkeypatch.setattr("tasks.data.tables.MAX_LINE_CHARS", 1000)
    path = tmp_path / "data.jsonl"
    lines = [json.dumps(r) for r in rows(3)]
    path.write_text("\n".join([*lines, json.dumps({"prompt": "x" * 5000, "response": "y"})]) + "\n")
    with pytest.raises(UserError, match=r"data.jsonl: line 4 is longer than 1,000 characters"):
        list(table_chunks(path, rows=2))
    path.write_text("\n".join(lines) + "\n")  # at the limit or under: read as before
    assert len(pd.concat(table_chunks(path, rows=2))) == 3
