"""Stage finetune: specialize the base model on the tokenized train split (LoRA by default).

With finetune.processes > 1 the flow starts that many training processes with torchrun (DDP or FSDP). Each
runs this module again, trains on its share of every batch, and rank 0 alone writes the outputs. Those
processes call the training steps as plain functions, not Prefect tasks, so that one stage is one flow run.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.distributed
from datasets import load_from_disk
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.stage import log_run_labels, run_stage
from tasks.errors import UserError
from tasks.models import pick_device
from tasks.params import FinetuneParams, Params
from tasks.training import (
    is_main_process,
    log,
    prepare_checkpoints,
    save_trained,
    train,
    training_fingerprint,
)

BASE_DIR = Path("models/base")
TRAIN_DIR = Path("data/tokenized/train")
CHECKPOINTS_DIR = Path("models/checkpoints")
OUT_DIR = Path("models/adapter")
LIVE_DIR = Path("reports/training")
SUMMARY = Path("reports/training.json")

Step = Callable[[Callable[..., Any]], Callable[..., Any]]


def as_prefect_task(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a training step as a Prefect task (shown in the UI); DVC, not Prefect, caches stage results."""
    return task(fn, cache_policy=NO_CACHE)


def finetune(params: FinetuneParams, seed: int, step: Step) -> dict[str, Any]:
    """Train from the last complete checkpoint or the base model; rank 0 writes the adapter and the summary."""
    device = pick_device(params.device)
    fingerprint = training_fingerprint(params, seed, [BASE_DIR, TRAIN_DIR])
    step(prepare_checkpoints)(CHECKPOINTS_DIR, fingerprint, params.on_input_change)
    trainer, summary = step(train)(BASE_DIR, load_from_disk(str(TRAIN_DIR)), params, seed, device,
                                   CHECKPOINTS_DIR, LIVE_DIR)
    step(save_trained)(trainer, OUT_DIR)
    log().info("trained %d steps in %.0f s: %.0f tokens/s%s", summary["steps"], summary["train_seconds"],
               summary["tokens_per_second"], f", MFU {summary['mfu']:.1%}" if "mfu" in summary else "")
    if is_main_process():
        SUMMARY.parent.mkdir(parents=True, exist_ok=True)
        SUMMARY.write_text(json.dumps({**summary, "device": device.type}, indent=2) + "\n", encoding="utf-8")
    return summary


@task(cache_policy=NO_CACHE)
def launch_training_processes(processes: int) -> None:
    """Run this module under torchrun with one process per device; any process failing fails the stage."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "flows.finetune"]
    if subprocess.run(command, check=False).returncode != 0:
        raise UserError(f"the {processes} training processes did not finish; their errors are in the log above")


@flow(name="finetune", on_running=[log_run_labels])
def finetune_flow(params: FinetuneParams, seed: int) -> dict[str, Any]:
    """One process trains here; several are started with torchrun and the summary rank 0 wrote is read back."""
    if params.processes == 1:
        return finetune(params, seed, as_prefect_task)
    launch_training_processes(params.processes)
    return json.loads(SUMMARY.read_text(encoding="utf-8"))


def training_process(params: Params) -> None:
    """One of the torchrun processes: the same steps, as plain functions, logging with the rank."""
    logging.basicConfig(level=logging.INFO, format=f"rank {os.environ['RANK']}: %(message)s", force=True)
    logging.getLogger("tailor.training").info("training process %s of %s started", os.environ["RANK"],
                                              os.environ["WORLD_SIZE"])
    finetune(params.finetune, params.seed, lambda fn: fn)
    # Leave together and close the process group before exiting: a process that exits with gloo's threads
    # still alive can abort during interpreter shutdown (SIGABRT, "terminate called without an active
    # exception"), and torchrun then fails the whole stage although training finished.
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    run_stage(training_process if "LOCAL_RANK" in os.environ else lambda p: finetune_flow(p.finetune, p.seed))
