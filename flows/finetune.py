"""Stage finetune: specialize the base model on the tokenized train split (LoRA by default).

With finetune.processes > 1 the flow starts that many training processes with torchrun (DDP or FSDP). Each
runs this module again, trains on its share of every batch, and rank 0 alone writes the outputs. Those
processes call the training steps as plain functions, not Prefect tasks, so that one stage is one flow run.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import psutil
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.stage import run_stage, start_stage_run
from tasks.core.errors import UserError
from tasks.core.interrupts import (
    RERUN,
    SIGNALS,
    STOP_REQUESTED,
    Interrupted,
    exit_interrupted,
    exit_when_interrupted,
    stop_at_step_boundary,
)
from tasks.core.params import FinetuneParams, Params


@dataclass(frozen=True)
class Paths:
    base: Path  # the base model directory
    train: Path  # the tokenized train split (Arrow)
    replay: Path  # the tokenized general text that finetune.replay_pct mixes in
    checkpoints: Path  # kept between runs so an interrupted run resumes
    out: Path  # the adapter (or full model)
    live: Path  # DVCLive curves
    summary: Path  # steps, tokens trained, loss (a DVC metrics file)
    timings: Path  # seconds, tokens/s, MFU: this machine's, not a DVC output (they differ on every run)


Step = Callable[[Callable[..., Any]], Callable[..., Any]]


def as_prefect_task(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a training step as a Prefect task (shown in the UI); DVC, not Prefect, caches stage results. A stop
    on SIGINT/SIGTERM ends the stage from inside the task (see tasks/core/interrupts.py)."""
    return task(exit_when_interrupted(fn), cache_policy=NO_CACHE)


def finetune(params: FinetuneParams, seed: int, paths: Paths, step: Step) -> dict[str, Any]:
    """Train from the last complete checkpoint or the base model; rank 0 writes the adapter and the summary."""
    # Imported here, where training runs, not at the top: the stage process that only launches torchrun then starts
    # without the seconds of CPU that torch, transformers, PEFT and TRL cost (benchmarks/RESULTS.md measures them).
    from datasets import load_from_disk

    from tasks.model.loading import pick_device
    from tasks.train.training import (
        is_main_process,
        log,
        prepare_checkpoints,
        save_trained,
        train,
        training_fingerprint,
        with_replay,
    )

    device = pick_device(params.device)
    # The adapter training starts from and the replayed text are inputs like the data: a change to either makes
    # old checkpoints stale.
    inputs = [paths.base, paths.train, *([params.init_adapter] if params.init_adapter is not None else []),
              *([paths.replay] if params.replay_pct else [])]
    fingerprint = training_fingerprint(params, seed, inputs)
    step(prepare_checkpoints)(paths.checkpoints, fingerprint, params.on_input_change)
    train_set = load_from_disk(str(paths.train))
    replayed = with_replay(train_set, load_from_disk(str(paths.replay)), params.replay_pct, seed) \
        if params.replay_pct else train_set
    trainer, summary = step(train)(paths.base, replayed, params, seed, device, paths.checkpoints, paths.live)
    summary["replay_examples"] = len(replayed) - len(train_set)
    step(save_trained)(trainer, paths.out)
    timings = summary.pop("timings")
    log().info("trained %d steps in %.0f s: %.0f tokens/s%s", summary["steps"], timings["train_seconds"],
               timings["tokens_per_second"], f", MFU {timings['mfu']:.1%}" if "mfu" in timings else "")
    if is_main_process():
        for path, record in ((paths.summary, {**summary, "device": device.type}), (paths.timings, timings)):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return summary


@task(cache_policy=NO_CACHE)
def launch_training_processes(processes: int, checkpoints: Path) -> None:
    """Run this module under torchrun with one process per device, with this stage's paths; any process failing
    fails the stage.

    torchrun runs in a session of its own, so a terminal's Ctrl-C reaches this process only. Each SIGINT/SIGTERM
    is passed from here to the training processes, exactly once: they all stop at the same step boundary and
    exit 0, so torchrun ends quietly (a signal to torchrun itself would end it with its own traceback), and this
    process reports the stop.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "flows.finetune", *sys.argv[1:]]
    launcher = subprocess.Popen(command, start_new_session=True)

    def forward(signum: int, frame: FrameType | None) -> None:
        STOP_REQUESTED.set()
        workers = psutil.Process(launcher.pid).children()
        for process in workers or [launcher]:  # before torchrun has started them, torchrun itself stops
            process.send_signal(signum)

    for signum in SIGNALS:
        signal.signal(signum, forward)
    code = launcher.wait()
    if STOP_REQUESTED.is_set():
        exit_interrupted(f"interrupted; {RERUN} resumes from the last complete checkpoint in {checkpoints} "
                         "(the training processes' last lines above name it)")
    if code != 0:
        raise UserError(f"the {processes} training processes did not finish; their errors are in the log above")


@flow(name="finetune", on_running=[start_stage_run])
def finetune_flow(params: FinetuneParams, seed: int, paths: Paths) -> dict[str, Any]:
    """One process trains here; several are started with torchrun and the summary rank 0 wrote is read back."""
    stop_at_step_boundary()
    if params.processes == 1:
        return finetune(params, seed, paths, as_prefect_task)
    launch_training_processes(params.processes, paths.checkpoints)
    return json.loads(paths.summary.read_text(encoding="utf-8"))


def main(params: Params, paths: Paths) -> None:
    finetune_flow(params.finetune, params.seed, paths)


def training_process(params: Params, paths: Paths) -> None:
    """One of the torchrun processes: the same steps, as plain functions, logging with the rank."""
    stop_at_step_boundary()
    logging.basicConfig(level=logging.INFO, format=f"rank {os.environ['RANK']}: %(message)s", force=True)
    logging.getLogger("tailor.training").info("training process %s of %s started", os.environ["RANK"],
                                              os.environ["WORLD_SIZE"])
    try:
        finetune(params.finetune, params.seed, paths, lambda fn: fn)
    except Interrupted as exc:
        leave_together()  # every process stopped at the same step
        # Exit 0: the launching stage asked for this stop and reports it; a failure code would make torchrun
        # print its own error report (a traceback) after the one line.
        print(f"\ntailor: {exc}", file=sys.stderr, flush=True)
        sys.exit(0)
    leave_together()


def leave_together() -> None:
    """Leave together and close the process group before exiting: a process that exits with gloo's threads still
    alive can abort during interpreter shutdown (SIGABRT, "terminate called without an active exception"), and
    torchrun then fails the whole stage although training finished."""
    import torch.distributed  # loaded by the training already (see finetune)

    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    run_stage(training_process if "LOCAL_RANK" in os.environ else main, Paths)
