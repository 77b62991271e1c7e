"""Reading the user's data files (JSONL, CSV, Parquet) into string-or-null tables, with one clear error each.

Files are read in chunks of rows (`table_chunks`), so a million-row file never becomes a million Python dicts:
each chunk is a DataFrame whose index is the row's position in the file (0-based, blank JSONL lines not counted),
which is what validation reports as "row N".
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from prefect import task

from tasks.core.errors import UserError
from tasks.core.retries import TRANSIENT_RETRIES

UTF8_BOM = b"\xef\xbb\xbf"
CHUNK_ROWS = 100_000  # rows per chunk: a chunk of typical instruction rows is a few tens of MB in pandas
MAX_LINE_CHARS = 16 * 1024 * 1024  # one JSONL line, one example: far above any validate.max_chars


def jsonl_chunks(path: Path, rows: int) -> Iterator[pd.DataFrame]:
    """JSON Lines, one object per line, `rows` objects per chunk; a broken line is reported with its number."""
    first_keys: list[str] | None = None
    columns: dict[str, list] = {}
    start = 0  # the file position (row number) of the chunk's first row
    with path.open(encoding="utf-8") as handle:
        number = 0
        # At most one line more than the limit is read: a line of hundreds of MB would otherwise fill the memory.
        while line := handle.readline(MAX_LINE_CHARS + 1):
            number += 1
            if len(line) > MAX_LINE_CHARS and not line.endswith("\n"):
                raise UserError(f"{path}: line {number} is longer than {MAX_LINE_CHARS:,} characters; a line holds "
                                "one example: split or shorten it")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}: line {number} is not valid JSON ({exc.msg}); fix or remove that line") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}: line {number} is a JSON {type(row).__name__}, expected an object")
            if first_keys is None:
                first_keys = list(row)
                columns = {key: [] for key in first_keys}
            elif row.keys() != columns.keys():
                raise UserError(f"{path}: line {number} has keys {sorted(row)} but the first line has "
                                f"{sorted(first_keys)}; every line needs the same fields")
            for key, values in columns.items():
                values.append(row[key])
            filled = len(next(iter(columns.values()))) if columns else 0
            if filled == rows:
                yield pd.DataFrame(columns, index=pd.RangeIndex(start, start + filled), dtype=object)
                start += filled
                columns = {key: [] for key in first_keys}
    filled = len(next(iter(columns.values()))) if columns else 0
    if filled:
        yield pd.DataFrame(columns, index=pd.RangeIndex(start, start + filled), dtype=object)


def parquet_chunks(path: Path, rows: int) -> Iterator[pd.DataFrame]:
    """Parquet record batches as object columns, numbered by their position in the file."""
    start = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=rows):
        frame = batch.to_pandas().astype(object)
        frame.index = pd.RangeIndex(start, start + len(frame))
        start += len(frame)
        yield frame


def readable(path: Path) -> str:
    """The file's suffix, once the checks that need no parsing pass: it exists, its type, no byte-order mark."""
    if not path.is_file():
        raise UserError(f"{path}: file not found; fix data.train/data.eval in params.yaml, or `dvc pull` it")
    suffix = path.suffix.lower()
    with path.open("rb") as handle:
        starts_with_bom = handle.read(3) == UTF8_BOM
    if suffix in (".jsonl", ".json", ".csv") and starts_with_bom:
        raise UserError(f"{path}: starts with a UTF-8 byte-order mark; save it as UTF-8 without BOM")
    if suffix not in (".jsonl", ".json", ".csv", ".parquet"):
        raise UserError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .csv or .parquet")
    return suffix


def table_chunks(path: Path, rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """Read a JSONL, CSV or Parquet file as strings-or-nulls, `rows` rows at a time, with a clear error for what
    cannot be read (raised when the reading reaches it)."""
    suffix = readable(path)
    empty = True
    try:
        chunks: Iterator[pd.DataFrame]
        if suffix in (".jsonl", ".json"):
            chunks = jsonl_chunks(path, rows)
        elif suffix == ".csv":
            chunks = pd.read_csv(path, dtype=object, keep_default_na=False, na_values=[""], encoding="utf-8",
                                 on_bad_lines="error", chunksize=rows)
        else:
            chunks = parquet_chunks(path, rows)
        for frame in chunks:
            if empty and frame.empty:
                break
            empty = False
            yield frame.where(frame.notna(), None)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}); re-encode the file as UTF-8") from None
    except (ValueError, pd.errors.ParserError, OSError) as exc:
        raise UserError(f"{path}: cannot be read as {suffix[1:]}: {exc}") from None
    if empty:
        raise UserError(f"{path}: has no rows; point data.train/data.eval at a file with examples")


@task(**TRANSIENT_RETRIES)
def read_table(path: Path) -> pd.DataFrame:
    """The whole file as one table (for files that fit in memory, such as the general-domain text)."""
    return pd.concat(list(table_chunks(path)))
