"""finetune under torchrun: two CPU processes (gloo), DDP or FSDP, train like one process with the same
effective batch, only rank 0 writes the adapter, the curves and the checkpoints, and resume works under it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from stage_runner import run, set_params

pytestmark = pytest.mark.slow
STEPS = 12
ADAPTER = "models/adapter/adapter_model.safetensors"


@pytest.fixture(scope="module")
def project(tokenized_project: Path) -> Path:
    return tokenized_project


def finetune(root: Path, **settings: Any) -> tuple[dict[str, Any], list[float], str]:
    """Run the finetune stage's command with these finetune params; its summary, loss curve and log."""
    set_params(root, "finetune", max_steps=STEPS, save_steps=6, logging_steps=1, learning_rate=0.02, **settings)
    result = run(root, "python", "-m", "flows.finetune")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    losses = pd.read_csv(root / "reports/training/plots/metrics/loss.tsv", sep="\t")["loss"].tolist()
    return json.loads((root / "reports/training.json").read_text()), losses, result.stdout + result.stderr


def adapter_shapes(root: Path) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in load_file(root / ADAPTER).items()}


@pytest.fixture(scope="module")
def single_run(project: Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    summary, _, _ = finetune(project, processes=1, batch_size=8, strategy="ddp")
    return summary, adapter_shapes(project)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_train_like_one_with_the_same_effective_batch(project: Path, single_run, strategy: str) -> None:
    double, double_losses, log = finetune(project, processes=2, batch_size=4, strategy=strategy)
    single, shapes = single_run

    assert double["processes"] == 2 and double["batch_size"] == 4 and double["steps"] == STEPS
    assert log.count("rank 0:") > 0 and log.count("rank 1:") > 0  # two processes really ran
    assert len(double_losses) == STEPS  # one curve, written once (by rank 0), not twice
    assert sum(double_losses[-3:]) < sum(double_losses[:3])
    adapter = sorted(p.name for p in (project / "models").iterdir() if p.name.startswith("adapter"))
    assert adapter == ["adapter"]
    assert adapter_shapes(project) == shapes  # whole weights (FSDP gathers its shards before saving)
    checkpoints = sorted(p.name for p in (project / "models/checkpoints").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-12", "checkpoint-6"]
    # The processes see the examples in another order than one process does, so the curves differ a little;
    # the loss reached is the same within 10%.
    assert double["final_loss"] == pytest.approx(single["final_loss"], rel=0.10)
    assert double["train_loss"] == pytest.approx(single["train_loss"], rel=0.10)


def test_a_two_process_run_resumes_from_its_last_complete_checkpoint(project: Path) -> None:
    finetune(project, processes=2, batch_size=4, strategy="ddp")
    uninterrupted = load_file(project / ADAPTER)
    # What a run killed after step 6 leaves behind: checkpoint-6 complete, nothing later.
    shutil.rmtree(project / "models/checkpoints/checkpoint-12")

    resumed, _, log = finetune(project, processes=2, batch_size=4, strategy="ddp")

    assert log.count("resuming from models/checkpoints/checkpoint-6") == 2  # both processes resume there
    assert resumed["steps"] == STEPS
    # Each process restores its own RNG state and place in the data, so the weights match the uninterrupted run.
    for name, tensor in load_file(project / ADAPTER).items():
        torch.testing.assert_close(tensor, uninterrupted[name], rtol=0, atol=1e-5)
