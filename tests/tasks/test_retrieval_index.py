"""The retrieval index on disk: built in batches and searched block by block, it finds what one pass over all
vectors in memory finds, ties in training order included."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import tasks.evaluate.prompting as prompting
from tasks.evaluate.prompting import build_index, nearest_rows

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"


def test_block_by_block_search_is_the_full_sort(tmp_path: Path, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.integers(-2, 3, size=(50, 4)).astype(np.float32)  # small integers: many exact ties
    queries = rng.integers(-2, 3, size=(6, 4)).astype(np.float32)
    np.save(tmp_path / "embeddings.npy", vectors)
    expected = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :5].tolist()
    for block in (7, 50, 1000):
        monkeypatch.setattr(prompting, "SCAN_ROWS", block)
        assert nearest_rows(tmp_path / "embeddings.npy", queries, 5) == expected


def test_index_built_in_batches_holds_every_vector(tmp_path: Path, monkeypatch) -> None:
    prompts = [line.split('"prompt": "')[1].split('"')[0] for line in (DEMO / "train.jsonl").read_text().splitlines()[:40]]
    build_index.fn(prompts, "minilm", tmp_path / "whole")
    monkeypatch.setattr(prompting, "EMBED_ROWS", 16)
    build_index.fn(prompts, "minilm", tmp_path / "batched")
    whole, batched = (np.load(tmp_path / name / "embeddings.npy") for name in ("whole", "batched"))
    assert batched.shape == whole.shape == (40, 384) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, whole, atol=1e-5)  # batch makeup may move the last bits
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
