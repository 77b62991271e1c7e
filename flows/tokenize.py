"""Stage tokenize: turn the validated splits into token ids with the base model's chat template."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
from prefect import flow
from transformers import AutoTokenizer

from flows.stage import log_run_labels, run_stage
from tasks.params import DataParams, TokenizeParams
from tasks.tokenization import save_dataset, token_stats, tokenize_split

BASE_DIR = Path("models/base")
IN_DIR = Path("data/validated")
OUT_DIR = Path("data/tokenized")
STATS = Path("reports/tokenize.json")


@flow(name="tokenize", on_running=[log_run_labels])
def tokenize_flow(data: DataParams, tokenize: TokenizeParams) -> dict[str, dict[str, float]]:
    """Tokenize train and eval; write Arrow datasets and their token statistics."""
    tokenizer = AutoTokenizer.from_pretrained(BASE_DIR)
    stats = {}
    shutil.rmtree(OUT_DIR, ignore_errors=True)
    for split in ("train", "eval"):
        frame = pd.read_parquet(IN_DIR / f"{split}.parquet")
        dataset = tokenize_split(tokenizer, frame, data.format, tokenize.system_prompt, tokenize.max_length)
        save_dataset(dataset, OUT_DIR / split)
        stats[split] = token_stats(dataset, tokenize.max_length)
    STATS.parent.mkdir(parents=True, exist_ok=True)
    STATS.write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    return stats


if __name__ == "__main__":
    run_stage(lambda params: tokenize_flow(params.data, params.tokenize))
