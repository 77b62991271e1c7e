"""Chat-template tokenization: loss only on the answer, truncation counted, text chunked, no padding."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from transformers import AutoTokenizer

from tasks.tokenization import IGNORE_INDEX, token_stats, tokenize_instruction, tokenize_split, tokenize_text


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_only_the_answer_is_labelled(tokenizer) -> None:
    piece = tokenize_instruction(tokenizer, "What does `len(obj)` do?", "Return the number of items.", None, 256)
    labelled = [t for t in piece.labels if t != IGNORE_INDEX]
    assert tokenizer.decode(labelled) == "Return the number of items.<|im_end|>\n"
    prompt_text = tokenizer.decode(piece.input_ids[: piece.prompt_length])
    assert prompt_text.endswith("What does `len(obj)` do?<|im_end|>\n<|im_start|>assistant\n")
    assert all(label == IGNORE_INDEX for label in piece.labels[: piece.prompt_length])
    assert not piece.truncated


def test_system_prompt_replaces_the_template_default(tokenizer) -> None:
    piece = tokenize_instruction(tokenizer, "Hi?", "Hello.", "Answer in one line.", 256)
    text = tokenizer.decode(piece.input_ids)
    assert text.startswith("<|im_start|>system\nAnswer in one line.<|im_end|>") and "helpful assistant" not in text


def test_truncation_is_counted(tokenizer) -> None:
    frame = pd.DataFrame({"prompt": ["Short?", "Long?"], "response": ["Yes.", "word " * 200]})
    dataset = tokenize_split.fn(tokenizer, frame, "instruction", None, 64)
    assert [len(ids) for ids in dataset["input_ids"]][1] == 64
    assert dataset["truncated"] == [False, True]
    stats = token_stats(dataset, 64)
    assert stats["examples"] == 2 and stats["truncated_pct"] == 50.0 and stats["padding_pct"] == 0.0
    assert stats["tokens"] == sum(len(ids) for ids in dataset["input_ids"])


def test_plain_text_is_chunked_not_truncated(tokenizer) -> None:
    pieces = tokenize_text(tokenizer, "alpha beta gamma " * 100, 32)
    assert len(pieces) > 2 and all(len(p.input_ids) <= 32 for p in pieces)
    assert sum(len(p.input_ids) for p in pieces) == len(tokenizer("alpha beta gamma " * 100)["input_ids"]) + 1
    assert all(p.labels == p.input_ids and not p.truncated for p in pieces)
