"""Stage finetune: specialize the base model on the tokenized train split (LoRA by default)."""

from __future__ import annotations

import json
from pathlib import Path

from datasets import load_from_disk
from prefect import flow

from flows.stage import run_stage
from tasks.models import load_model, pick_device
from tasks.params import FinetuneParams
from tasks.training import resume_checkpoint, save_trained, train, training_fingerprint

BASE_DIR = Path("models/base")
TRAIN_DIR = Path("data/tokenized/train")
CHECKPOINTS_DIR = Path("models/checkpoints")
OUT_DIR = Path("models/adapter")
LIVE_DIR = Path("reports/training")
SUMMARY = Path("reports/training.json")


@flow(name="finetune")
def finetune_flow(finetune: FinetuneParams, seed: int) -> dict[str, float]:
    """Train, resuming from the last checkpoint of an interrupted run with the same inputs; save the adapter."""
    device = pick_device(finetune.device)
    resume_from = resume_checkpoint(CHECKPOINTS_DIR, training_fingerprint(finetune, seed, [BASE_DIR, TRAIN_DIR]))
    model, _ = load_model(BASE_DIR, device)
    trained, summary = train(model, load_from_disk(str(TRAIN_DIR)), finetune, seed, device,
                             CHECKPOINTS_DIR, resume_from, LIVE_DIR)
    save_trained(trained, OUT_DIR)
    SUMMARY.parent.mkdir(parents=True, exist_ok=True)
    SUMMARY.write_text(json.dumps({**summary, "device": device.type}, indent=2) + "\n", encoding="utf-8")
    return summary


if __name__ == "__main__":
    run_stage(lambda params: finetune_flow(params.finetune, params.seed))
