"""The multi-task mixture: each part's share of the examples is its weight, drawn reproducibly; no task's held-out
row is another's training row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import Dataset

from tasks.data.mixing import across_tasks, draw, mixture


def test_draw_repeats_whole_passes_then_samples_without_repeats() -> None:
    picks = draw(4, 10, np.random.default_rng(0))
    assert picks[:8] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert len(set(picks[8:])) == 2 and set(picks[8:]) <= {0, 1, 2, 3}
    assert len(set(draw(100, 30, np.random.default_rng(0)))) == 30  # below the size: no example twice


def test_mixture_draws_each_share_of_the_total_reproducibly() -> None:
    parts = {"a": Dataset.from_dict({"x": list(range(30))}), "b": Dataset.from_dict({"x": list(range(100, 190))})}
    mixed, counts = mixture.fn(parts, {"a": 0.5, "b": 0.5}, seed=1)
    assert counts == {"a": 60, "b": 60} and len(mixed) == 120  # as many as both hold: a is repeated, b sampled
    rows = mixed["x"]
    assert sorted(rows[:60]) == sorted(list(range(30)) * 2)
    assert len(set(rows[60:])) == 60 and set(rows[60:]) <= set(range(100, 190))
    assert mixture.fn(parts, {"a": 0.5, "b": 0.5}, seed=1)[0]["x"] == rows
    assert mixture.fn(parts, {"a": 0.5, "b": 0.5}, seed=2)[0]["x"] != rows


def conversations(*questions: str) -> pd.DataFrame:
    return pd.DataFrame({"messages": [json.dumps([{"role": "user", "content": q}, {"role": "assistant", "content": "A."}])
                                      for q in questions]})


def test_a_held_out_row_of_one_task_in_another_tasks_training_data_is_found(tmp_path: Path) -> None:
    splits = {("tickets", "train"): ["Reset my password please", "The printer on floor 3 is jammed again"],
              ("tickets", "eval"): ["My VPN drops every hour"],
              ("faq", "train"): ["How do I install Python on Windows?", "my vpn drops every hour!"],
              ("faq", "eval"): ["Reset my password please, today", "Where is the cafeteria?"]}
    for (name, split), questions in splits.items():
        (tmp_path / name).mkdir(exist_ok=True)
        conversations(*questions).to_parquet(tmp_path / name / f"{split}.parquet")
    assert across_tasks.fn(tmp_path, ["tickets", "faq"], 0.75) == [
        {"eval": "tickets row 1", "train": "faq row 2", "similarity": 1.0},  # case and punctuation
        {"eval": "faq row 1", "train": "tickets row 1", "similarity": 0.769},  # a word added
    ]
    assert across_tasks.fn(tmp_path, ["tickets"], 0.75) == []  # one task: validate's own check covers it
