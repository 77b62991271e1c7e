"""Few-shot selection is seeded; retrieval finds the most similar training example (MiniLM offline, and BM25)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from canonical import canonical

from tasks.evaluate.prompting import build_index, contexts, few_shot_rows, retrieve
from tasks.formats.registry import CONVERSATION, TEXT

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"
TRAIN = pd.read_json(DEMO / "train.jsonl", lines=True).head(300)


def test_few_shot_rows_are_fixed_by_the_seed_and_become_turns_or_passages() -> None:
    first = few_shot_rows(TRAIN, 3, seed=0)
    assert len(first) == 3 and first == few_shot_rows(TRAIN, 3, seed=0)
    assert first != few_shot_rows(TRAIN, 3, seed=1)
    [turns] = contexts(canonical(TRAIN), [first], CONVERSATION)
    assert turns == [(TRAIN["prompt"][j], TRAIN["response"][j]) for j in first]
    [passages] = contexts(TRAIN.rename(columns={"response": "text"}), [first], TEXT)
    assert passages == [TRAIN["response"][j] for j in first]


@pytest.mark.parametrize("retriever", ["minilm", "bm25"])
def test_retrieval_ranks_the_matching_example_first(tmp_path: Path, retriever: str) -> None:
    prompts = list(TRAIN["prompt"])
    index = build_index.fn(prompts, retriever, tmp_path / "index")
    queries = [prompts[17], prompts[200]]
    nearest = retrieve.fn(index, queries, 3)
    assert [row[0] for row in nearest] == [17, 200]
    assert all(len(row) == 3 and len(set(row)) == 3 for row in nearest)
    assert retrieve.fn(index, queries, 3) == nearest  # deterministic


def test_minilm_understands_paraphrases(tmp_path: Path) -> None:
    """A real embedding model, not word overlap: a reworded question still finds its example."""
    prompts = ["What does `shlex.quote(s)` do?", "What does `math.sqrt(x)` do?", "What does `os.getcwd()` do?"]
    index = build_index.fn(prompts, "minilm", tmp_path / "index")
    assert retrieve.fn(index, ["How do I take the square root of a number?"], 1) == [[1]]
