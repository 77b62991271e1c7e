"""Plain text (`data.format: text`), for domain adaptation: a passage per row under data.columns.text, every
token of it a target."""

from __future__ import annotations

import pandas as pd

from tasks.core.params import DataParams, ValidateParams
from tasks.data.validation import Checks, row_checks
from tasks.formats.format import Format


def columns(data: DataParams) -> dict[str, str]:
    return {"text": data.columns.text}


def checks(data: DataParams, limits: ValidateParams) -> Checks:
    return row_checks([data.columns.text], limits)


def canonical(chunk: pd.DataFrame, data: DataParams) -> pd.DataFrame:
    return pd.DataFrame({"text": list(chunk[data.columns.text])})


FORMAT = Format(columns, checks, canonical)
