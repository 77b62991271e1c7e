"""The dev split: examples carved from the train file for every choice made before a candidate is certified
(tailor sweep's trials, settings compared by hand with evaluate.split dev), so that the test split (data.eval)
scores a candidate that was not chosen on it.

A row goes to dev by a seeded hash of its group, never by position: a file sorted by label or by source is carved
evenly, the carve is the same on every machine and at every chunk size, and the rows of one group always land on
the same side. The group is data.group_by's value when it is set (the rows of one document, user or thread stay
together), else the example's prompt (a conversation's first user message, a text's text), so identical prompts
never straddle the carve. Ungrouped label data (validate.allowed_responses) is stratified: each label gives its
own data.dev_pct of its rows, rounded. Memory holds 9 bytes a row (a hash and a flag), never the rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

import numpy as np
import pandas as pd

from tasks.core.errors import UserError
from tasks.core.params import DataParams, ValidateParams
from tasks.formats.registry import TEXT

# A raw chunk of the train file and the same rows in canonical shape.
Rows = tuple[pd.DataFrame, pd.DataFrame]


def prompts(frame: pd.DataFrame) -> pd.Series:
    """What makes canonical rows the same example: a text's text, a conversation's first user message."""
    if "messages" not in frame:
        return frame["text"]
    return frame["messages"].map(lambda messages: next(
        (m["content"] for m in json.loads(messages) if m["role"] == "user"), messages))


def group_hashes(groups: pd.Series, seed: int) -> np.ndarray:
    """Each group's seeded 64-bit BLAKE2b hash: the order groups are drawn into dev in."""
    key = seed.to_bytes(8, "little")
    return np.fromiter((int.from_bytes(hashlib.blake2b(str(group).encode("utf-8", "surrogatepass"), digest_size=8,
                                                       key=key).digest(), "little") for group in groups),
                       dtype=np.uint64, count=len(groups))


def dev_rows(train: Iterable[Rows], data: DataParams, limits: ValidateParams, seed: int) -> np.ndarray:
    """Which rows of the train file (in file order) are dev rows: per stratum, the data.dev_pct of its groups
    with the lowest hashes."""
    labelled = data.group_by is None and limits.allowed_responses is not None and data.shape != TEXT
    hashes, strata = [], []
    for raw, frame in train:
        groups = prompts(frame).reset_index(drop=True)
        if data.group_by is not None:
            if data.group_by not in raw.columns:
                raise UserError(f"data.group_by: {data.train} has no column '{data.group_by}'; its columns are "
                                f"{', '.join(map(str, raw.columns))}")
            groups = raw[data.group_by].reset_index(drop=True).fillna(groups)  # no group: its own prompt's
        hashes.append(group_hashes(groups, seed))
        # The label: a conversation's last answer (validate checks that it is one of the allowed responses).
        strata.append(frame["messages"].map(lambda m: json.loads(m)[-1]["content"]).to_numpy(dtype=object)
                      if labelled else np.zeros(len(frame), dtype=object))
    every_hash, every_stratum = np.concatenate(hashes), np.concatenate(strata)
    dev = np.zeros(len(every_hash), dtype=bool)
    for stratum in pd.unique(every_stratum):
        members = every_stratum == stratum
        drawn = np.unique(every_hash[members])  # sorted: a group's rows share its hash
        wanted = round(len(drawn) * data.dev_pct / 100)
        dev |= members & np.isin(every_hash, drawn[:wanted])
    carved = int(dev.sum())
    if carved == 0:
        raise UserError(f"data.dev_pct: {data.dev_pct}% of {data.train}'s {len(dev)} rows carves no dev example; "
                        "raise it, or set it to 0 for no dev split")
    if len(dev) - carved < limits.min_examples:
        raise UserError(f"data.dev_pct: carving {carved} dev rows leaves {len(dev) - carved} of {data.train}'s rows "
                        f"to train, fewer than validate.min_examples ({limits.min_examples}); lower data.dev_pct or "
                        "add training data")
    return dev


def carved(frames: Iterable[pd.DataFrame], dev: np.ndarray, keep_dev: bool) -> Iterable[pd.DataFrame]:
    """The train file's canonical chunks without their dev rows, or only those (keep_dev)."""
    start = 0
    for frame in frames:
        chosen = dev[start:start + len(frame)]
        start += len(frame)
        kept = frame[chosen if keep_dev else ~chosen]
        if len(kept):  # an empty chunk has no column types for the Parquet schema
            yield kept
