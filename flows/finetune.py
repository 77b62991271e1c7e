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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Paths:
    base: Path  # the base model directory
    train: Path  # the tokenized train split (Arrow)
    checkpoints: Path  # kept between runs so an interrupted run resumes
    out: Path  # the adapter (or full model)
    live: Path  # DVCLive curves
    summary: Path  # steps, loss, tokens/s (a DVC metrics file)


Step = Callable[[Callable[..., Any]], Callable[..., Any]]


def as_prefect_task(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a training step as a Prefect task (shown in the UI); DVC, not Prefect, caches stage results."""
    return task(fn, cache_policy=NO_CACHE)


def finetune(params: FinetuneParams, seed: int, paths: Paths, step: Step) -> dict[str, Any]:
    """Train from the last complete checkpoint or the base model; rank 0 writes the adapter and the summary."""
    device = pick_device(params.device)
    fingerprint = training_fingerprint(params, seed, [paths.base, paths.train])
    step(prepare_checkpoints)(paths.checkpoints, fingerprint, params.on_input_change)
    trainer, summary = step(train)(paths.base, load_from_disk(str(paths.train)), params, seed, device,
                                   paths.checkpoints, paths.live)
    step(save_trained)(trainer, paths.out)
    log().info("trained %d steps in %.0f s: %.0f tokens/s%s", summary["steps"], summary["train_seconds"],
               summary["tokens_per_second"], f", MFU {summary['mfu']:.1%}" if "mfu" in summary else "")
    if is_main_process():
        paths.summary.parent.mkdir(parents=True, exist_ok=True)
        paths.summary.write_text(json.dumps({**summary, "device": device.type}, indent=2) + "\n", encoding="utf-8")
    return summary


@task(cache_policy=NO_CACHE)
def launch_training_processes(processes: int) -> None:
    """Run this module under torchrun with one process per device, with this stage's paths; any process failing
    fails the stage."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "flows.finetune", *sys.argv[1:]]
    if subprocess.run(command, check=False).returncode != 0:
        raise UserError(f"the {processes} training processes did not finish; their errors are in the log above")


@flow(name="finetune", on_running=[log_run_labels])
def finetune_flow(params: FinetuneParams, seed: int, paths: Paths) -> dict[str, Any]:
    """One process trains here; several are started with torchrun and the summary rank 0 wrote is read back."""
    if params.processes == 1:
        return finetune(params, seed, paths, as_prefect_task)
    launch_training_processes(params.processes)
    return json.loads(paths.summary.read_text(encoding="utf-8"))


def main(params: Params, paths: Paths) -> None:
    finetune_flow(params.finetune, params.seed, paths)


def training_process(params: Params, paths: Paths) -> None:
    """One of the torchrun processes: the same steps, as plain functions, logging with the rank."""
    logging.basicConfig(level=logging.INFO, format=f"rank {os.environ['RANK']}: %(message)s", force=True)
    logging.getLogger("tailor.training").info("training process %s of %s started", os.environ["RANK"],
                                              os.environ["WORLD_SIZE"])
    finetune(params.finetune, params.seed, paths, lambda fn: fn)
    # Leave together and close the process group before exiting: a process that exits with gloo's threads
    # still alive can abort during interpreter shutdown (SIGABRT, "terminate called without an active
    # exception"), and torchrun then fails the whole stage although training finished.
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    run_stage(training_process if "LOCAL_RANK" in os.environ else main, Paths)
