"""Fixtures shared by the inference and scoring tests."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from canonical import canonical
from transformers import AutoModelForCausalLM, AutoTokenizer

from tasks.data.tokenization import tokenize_split
from tasks.formats.registry import CONVERSATION

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"


@pytest.fixture(scope="module")
def setup(tiny_model_dir: Path):
    """The tiny model, its tokenizer, and 7 demo eval examples tokenized as the pipeline does."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    frame = pd.read_json(DEMO / "eval.jsonl", lines=True).head(7)
    return model, tokenizer, tokenize_split.fn(tokenizer, canonical(frame), CONVERSATION, None, 512)
