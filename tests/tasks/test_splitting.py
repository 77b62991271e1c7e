"""The dev split's carve: seeded, the same at any chunk size, stratified by label, groups kept whole, and a carve
that leaves too little (or nothing) named."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from canonical import canonical

from tasks.core.errors import UserError
from tasks.core.params import DataParams, ValidateParams
from tasks.data.splitting import carved, dev_rows

# 1000 tickets sorted by label (600, 300, 100), three per customer.
TICKETS = pd.DataFrame({"prompt": [f"ticket {i}: it broke" for i in range(1000)],
                        "response": ["billing"] * 600 + ["outage"] * 300 + ["refund"] * 100,
                        "customer": [f"c{i // 3}" for i in range(1000)]})
LABELS = ValidateParams(allowed_responses=["billing", "outage", "refund"], min_examples=50)


def rows(frame: pd.DataFrame, size: int) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    for start in range(0, len(frame), size):
        raw = frame.iloc[start:start + size]
        yield raw, canonical(raw)


def data(**settings: object) -> DataParams:
    return DataParams(train=Path("train.jsonl"), eval=Path("eval.jsonl"), **settings)


def test_the_carve_is_seeded_stratified_and_the_same_at_any_chunk_size() -> None:
    dev = dev_rows(rows(TICKETS, 1000), data(dev_pct=10), LABELS, seed=42)
    assert TICKETS["response"][dev].value_counts().to_dict() == {"billing": 60, "outage": 30, "refund": 10}
    assert np.array_equal(dev, dev_rows(rows(TICKETS, 137), data(dev_pct=10), LABELS, seed=42))
    assert not np.array_equal(dev, dev_rows(rows(TICKETS, 1000), data(dev_pct=10), LABELS, seed=7))
    assert dev[:600].any() and dev[900:].any()  # drawn across the file, not its first rows
    train = pd.concat(carved((c for _, c in rows(TICKETS, 137)), dev, keep_dev=False))
    held = pd.concat(carved((c for _, c in rows(TICKETS, 137)), dev, keep_dev=True))
    assert (len(train), len(held)) == (900, 100) and set(train["messages"]).isdisjoint(held["messages"])


def test_a_group_stays_on_one_side() -> None:
    dev = dev_rows(rows(TICKETS, 250), data(dev_pct=20, group_by="customer"), LABELS, seed=42)
    sides = pd.Series(dev).groupby(TICKETS["customer"]).nunique()
    assert (sides == 1).all() and 150 <= dev.sum() <= 250  # whole customers, about 20% of them


def test_a_carve_that_leaves_too_little_is_named() -> None:
    few = TICKETS.head(60)
    with pytest.raises(UserError, match="carves no dev example"):
        dev_rows(rows(few, 100), data(dev_pct=0.5), ValidateParams(min_examples=10), seed=42)
    with pytest.raises(UserError, match="fewer than validate.min_examples \\(50\\)"):
        dev_rows(rows(few, 100), data(dev_pct=40), ValidateParams(min_examples=50), seed=42)
    with pytest.raises(UserError, match="has no column 'team'; its columns are prompt, response, customer"):
        dev_rows(rows(few, 100), data(dev_pct=10, group_by="team"), LABELS, seed=42)


def test_params_name_a_dev_split_that_is_not_there() -> None:
    with pytest.raises(ValueError, match="group_by groups the rows of the dev split's carve, and dev_pct is 0"):
        data(group_by="customer")
