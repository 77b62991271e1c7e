"""Preference pairs (`data.format: preference`): a prompt with a chosen and a rejected answer per row, under the
file's column names; each row becomes the conversation that ends with the chosen answer, and the rejected one."""

from __future__ import annotations

import pandas as pd

from tasks.core.params import DataParams, ValidateParams
from tasks.data.validation import Checks, row_checks
from tasks.formats.format import Format, exchange


def columns(data: DataParams) -> dict[str, str]:
    return {"prompt": data.columns.prompt, "chosen": data.columns.chosen, "rejected": data.columns.rejected}


def checks(data: DataParams, limits: ValidateParams) -> Checks:
    return row_checks(list(columns(data).values()), limits, answers_differ=(data.columns.chosen, data.columns.rejected))


def canonical(chunk: pd.DataFrame, data: DataParams) -> pd.DataFrame:
    return pd.DataFrame({"messages": [exchange(prompt, chosen) for prompt, chosen in
                                      zip(chunk[data.columns.prompt], chunk[data.columns.chosen])],
                         "rejected": list(chunk[data.columns.rejected])})


FORMAT = Format(columns, checks, canonical)
