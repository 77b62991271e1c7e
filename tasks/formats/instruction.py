"""Instruction data (`data.format: instruction`): a prompt and its response per row, under the file's column names
(data.columns.prompt, data.columns.response); each row becomes a one-exchange conversation."""

from __future__ import annotations

import pandas as pd

from tasks.core.params import DataParams, ValidateParams
from tasks.data.validation import Checks, row_checks
from tasks.formats.format import Format, exchange


def columns(data: DataParams) -> dict[str, str]:
    return {"prompt": data.columns.prompt, "response": data.columns.response}


def checks(data: DataParams, limits: ValidateParams) -> Checks:
    return row_checks(list(columns(data).values()), limits)


def canonical(chunk: pd.DataFrame, data: DataParams) -> pd.DataFrame:
    return pd.DataFrame({"messages": [exchange(prompt, response) for prompt, response in
                                      zip(chunk[data.columns.prompt], chunk[data.columns.response])]})


FORMAT = Format(columns, checks, canonical)
