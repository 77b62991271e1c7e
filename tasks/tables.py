"""Reading the user's data files (JSONL, CSV, Parquet) into string-or-null tables, with one clear error each."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from prefect import task

from tasks.errors import UserError
from tasks.retries import TRANSIENT_RETRIES

UTF8_BOM = b"\xef\xbb\xbf"


def read_jsonl(path: Path) -> pd.DataFrame:
    """JSON Lines, one object per line; a broken line is reported with its number."""
    rows: list[dict] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}: line {number} is not valid JSON ({exc.msg}); fix or remove that line") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}: line {number} is a JSON {type(row).__name__}, expected an object")
            if rows and row.keys() != rows[0].keys():
                raise UserError(f"{path}: line {number} has keys {sorted(row)} but the first line has "
                                f"{sorted(rows[0])}; every line needs the same fields")
            rows.append(row)
    return pd.DataFrame(rows, dtype=object)


@task(**TRANSIENT_RETRIES)
def read_table(path: Path) -> pd.DataFrame:
    """Read a JSONL, CSV or Parquet file as strings-or-nulls, with a clear error for what cannot be read."""
    if not path.is_file():
        raise UserError(f"{path}: file not found; fix data.train/data.eval in params.yaml, or `dvc pull` it")
    suffix = path.suffix.lower()
    with path.open("rb") as handle:
        starts_with_bom = handle.read(3) == UTF8_BOM
    if suffix in (".jsonl", ".json", ".csv") and starts_with_bom:
        raise UserError(f"{path}: starts with a UTF-8 byte-order mark; save it as UTF-8 without BOM")
    try:
        if suffix in (".jsonl", ".json"):
            frame = read_jsonl(path)
        elif suffix == ".csv":
            frame = pd.read_csv(path, dtype=object, keep_default_na=False, na_values=[""], encoding="utf-8",
                                on_bad_lines="error")
        elif suffix == ".parquet":
            frame = pd.read_parquet(path).astype(object)
        else:
            raise UserError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .csv or .parquet")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}); re-encode the file as UTF-8") from None
    except (ValueError, pd.errors.ParserError, OSError) as exc:
        raise UserError(f"{path}: cannot be read as {suffix[1:]}: {exc}") from None
    if frame.empty:
        raise UserError(f"{path}: has no rows; point data.train/data.eval at a file with examples")
    return frame.where(frame.notna(), None)
