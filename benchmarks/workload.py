"""The pipeline's own model, params and data, loaded the way its stages load them, for the benchmarks."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from datasets import Dataset
from transformers import AutoTokenizer

from tasks.core.dag import declared_paths
from tasks.core.params import Params, load_params
from tasks.data.tokenization import tokenize_split

REPO = Path(__file__).resolve().parents[1]
BASE_DIR = REPO / declared_paths("base_model")["out"]
VALIDATED_DIR = REPO / declared_paths("validate")["out"]


def pipeline_params() -> Params:
    """params.yaml, validated by the pipeline's own schema."""
    return load_params(REPO / "params.yaml")


def tokenized_split(model_dir: Path, split: str, params: Params) -> Dataset:
    """A validated split tokenized as the tokenize stage does it, with the given model's tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    frame = pd.read_parquet(VALIDATED_DIR / f"{split}.parquet")
    return tokenize_split.fn(tokenizer, frame, params.data.shape, params.tokenize.system_prompt,
                             params.tokenize.max_length)
