"""Tables in a format's default column names as the validate stage writes them (its canonical shape), for tests
that start after validation."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tasks.core.params import DataParams
from tasks.formats.registry import format_of


def canonical(frame: pd.DataFrame, data_format: str = "instruction") -> pd.DataFrame:
    data = DataParams(format=data_format, train=Path("train.jsonl"), eval=Path("eval.jsonl"))
    return format_of(data_format).canonical(frame, data)
