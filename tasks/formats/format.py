"""What a data format provides: the columns it reads, the checks its rows must pass (Great Expectations, through
tasks/data/validation.py), and the mapping of a validated chunk to the canonical shape tasks/formats/registry.py
names for it."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from tasks.core.params import DataParams, ValidateParams
from tasks.data.validation import Checks


@dataclass(frozen=True)
class Format:
    # The file's column for each part of an example (`tailor check` and the error messages name them).
    columns: Callable[[DataParams], dict[str, str]]
    # What validate checks, on the file's rows as they are.
    checks: Callable[[DataParams, ValidateParams], Checks]
    # A chunk of a split that passed validation, in the canonical shape's columns (`messages`, `rejected`, `text`).
    canonical: Callable[[pd.DataFrame, DataParams], pd.DataFrame]


def conversation_json(messages: list[dict[str, Any]]) -> str:
    """A conversation as the canonical `messages` value: a JSON list of {"role", "content"}."""
    return json.dumps([{"role": m["role"], "content": m["content"]} for m in messages], ensure_ascii=False)


def exchange(prompt: str, answer: str) -> str:
    """One question and its answer as a canonical conversation."""
    return conversation_json([{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}])
