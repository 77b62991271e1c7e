"""finetune under torchrun: two CPU processes (gloo), DDP or FSDP, train like one process with the same
effective batch, only rank 0 writes the adapter, the curves and the checkpoints, and resume works under it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import pytest
import torch
from safetensors.torch import load_file
from stage_runner import run, set_params, stage_command

from benchmarks.harness import environment

pytestmark = [pytest.mark.slow, pytest.mark.long]
STEPS = 12
ADAPTER = "models/adapter/adapter_model.safetensors"


@pytest.fixture(scope="module")
def project(tokenized_project: Path) -> Path:
    return tokenized_project


def finetune(root: Path, **settings: Any) -> tuple[dict[str, Any], list[float], str]:
    """Run the finetune stage's command with these finetune params; its summary, loss curve and log."""
    set_params(root, "finetune", max_steps=STEPS, save_steps=6, logging_steps=1, learning_rate=0.02, **settings)
    result = run(root, *stage_command(root, "finetune"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    losses = pd.read_csv(root / "reports/training/plots/metrics/loss.tsv", sep="\t")["loss"].tolist()
    return json.loads((root / "reports/training.json").read_text()), losses, result.stdout + result.stderr


@dataclass
class TwoProcessRun:
    summary: dict[str, Any]
    losses: list[float]
    log: str
    adapter: dict[str, torch.Tensor]


def shapes(adapter: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in adapter.items()}


@pytest.fixture(scope="module")
def single_run(project: Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    summary, _, _ = finetune(project, processes=1, batch_size=8, strategy="ddp")
    return summary, shapes(load_file(project / ADAPTER))


@pytest.fixture(scope="module")
def ddp_run(project: Path) -> TwoProcessRun:
    summary, losses, log = finetune(project, processes=2, batch_size=4, strategy="ddp")
    return TwoProcessRun(summary, losses, log, load_file(project / ADAPTER))


def assert_trained_like_one_process(project: Path, run: TwoProcessRun,
                                    single: tuple[dict[str, Any], dict[str, tuple[int, ...]]]) -> None:
    """Two processes ran, rank 0 alone wrote one curve, one adapter of whole weights and the checkpoints, and the
    loss reached is one process's with the same effective batch."""
    summary, single_shapes = single
    assert run.summary["processes"] == 2 and run.summary["batch_size"] == 4
    assert run.summary["steps"] == STEPS
    assert run.log.count("rank 0:") > 0 and run.log.count("rank 1:") > 0  # two processes really ran
    assert len(run.losses) == STEPS  # one curve, written once (by rank 0), not twice
    assert sum(run.losses[-3:]) < sum(run.losses[:3])
    adapter = sorted(p.name for p in (project / "models").iterdir() if p.name.startswith("adapter"))
    assert adapter == ["adapter"]
    assert shapes(run.adapter) == single_shapes  # whole weights (FSDP gathers its shards before saving)
    checkpoints = sorted(p.name for p in (project / "models/checkpoints").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-12", "checkpoint-6"]
    # The processes see the examples in another order than one process does, so the curves differ a little;
    # the loss reached is the same within 10%.
    assert run.summary["final_loss"] == pytest.approx(summary["final_loss"], rel=0.10)
    assert run.summary["train_loss"] == pytest.approx(summary["train_loss"], rel=0.10)


def test_two_ddp_processes_train_like_one_with_the_same_effective_batch(project: Path, single_run, ddp_run) -> None:
    assert_trained_like_one_process(project, ddp_run, single_run)


def training_processes(project: Path) -> list[psutil.Process]:
    """Processes still running the finetune stage in this project (the stage, torchrun, its workers)."""
    alive = []
    for process in psutil.process_iter(["cmdline", "cwd"]):
        with contextlib.suppress(psutil.Error):
            if process.info["cwd"] == str(project) and "flows.finetune" in " ".join(process.info["cmdline"] or []):
                alive.append(process)
    return alive


def test_fsdp_ctrl_c_stops_both_processes_at_the_same_step_and_the_rerun_resumes(project: Path, single_run,
                                                                                ddp_run) -> None:
    """FSDP, two processes. Ctrl-C reaches the stage (torchrun runs in a session of its own); it passes the signal
    once to each training process; they agree on the step to stop at, leave no half-written checkpoint and no
    process, and end torchrun quietly. The re-run resumes each process's RNG state, place in the data and optimizer
    shard from the last complete checkpoint and trains like one process, ending with the uninterrupted DDP run's
    weights: FSDP shards what DDP copies, and on CPU the two give the same weights (measured: bit for bit)."""
    set_params(project, "finetune", max_steps=STEPS, save_steps=6, logging_steps=1, learning_rate=0.02,
               processes=2, batch_size=4, strategy="fsdp")
    shutil.rmtree(project / "models/checkpoints", ignore_errors=True)
    stage = subprocess.Popen(stage_command(project, "finetune"), cwd=project, env=environment(),
                             start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (project / "models/checkpoints/checkpoint-6/tailor-complete").exists():
        assert time.monotonic() < deadline and stage.poll() is None, "training never reached checkpoint 6"
        time.sleep(0.05)
    sent = time.monotonic()
    os.killpg(stage.pid, signal.SIGINT)
    log, _ = stage.communicate(timeout=120)
    assert stage.returncode == 130, log[-3000:]
    assert time.monotonic() - sent < 30
    assert log.count("interrupted at step") == 2 and "Traceback" not in log, log[-3000:]
    assert "`dvc repro` resumes from the last complete checkpoint in models/checkpoints" in log
    assert training_processes(project) == []
    assert not (project / "models/checkpoints/checkpoint-12").exists()
    resumed = TwoProcessRun(*finetune(project, processes=2, batch_size=4, strategy="fsdp"), load_file(project / ADAPTER))
    assert resumed.log.count("resuming from models/checkpoints/checkpoint-6") == 2
    assert resumed.log.count("{'loss': ") == STEPS - 6  # steps 7 to 12 only
    assert_trained_like_one_process(project, resumed, single_run)
    for name, tensor in resumed.adapter.items():
        torch.testing.assert_close(tensor, ddp_run.adapter[name], rtol=0, atol=1e-5)
