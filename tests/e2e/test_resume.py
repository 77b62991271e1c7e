"""A training run killed with SIGKILL or stopped with Ctrl-C resumes from its last complete checkpoint and ends
where an uninterrupted run ends; a checkpoint cut off while being written is removed, never resumed from."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from stage_runner import FINETUNE_AGAIN, ctrl_c_training, run, set_params, wait_for

from benchmarks.harness import environment

pytestmark = pytest.mark.slow
ADAPTER = "models/adapter/adapter_model.safetensors"


@pytest.fixture(scope="module")
def project(tokenized_project: Path) -> Path:
    set_params(tokenized_project, "finetune", max_steps=30, save_steps=10, logging_steps=5, learning_rate=0.02,
               processes=1, batch_size=8, strategy="ddp")
    return tokenized_project


@pytest.fixture(scope="module")
def uninterrupted(project: Path) -> tuple[dict[str, torch.Tensor], float]:
    """The adapter and final loss of a run that nobody killed."""
    reference = run(project, "dvc", "repro", "--no-run-cache", "finetune")
    assert reference.returncode == 0, reference.stdout[-3000:]
    return load_file(project / ADAPTER), json.loads((project / "reports/training.json").read_text())["final_loss"]


def start_training(project: Path) -> subprocess.Popen[bytes]:
    shutil.rmtree(project / "models" / "checkpoints", ignore_errors=True)
    return subprocess.Popen(FINETUNE_AGAIN, cwd=project, env=environment(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill(training: subprocess.Popen[bytes]) -> None:
    os.killpg(training.pid, signal.SIGKILL)  # dvc and the stage process
    training.wait()


def resume_and_compare(project: Path, uninterrupted: tuple[dict[str, torch.Tensor], float]) -> str:
    """Re-run the stage; it must reach max_steps with the uninterrupted run's weights and loss. Returns its log."""
    resumed = run(project, *FINETUNE_AGAIN)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    state = json.loads((project / "models/checkpoints/checkpoint-30/trainer_state.json").read_text())
    assert state["global_step"] == 30
    # Same weights and loss as the uninterrupted run, within float tolerance (CPU, same seed and data order).
    expected, expected_loss = uninterrupted
    got = load_file(project / ADAPTER)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, atol=1e-5, rtol=1e-4)
    assert json.loads((project / "reports/training.json").read_text())["final_loss"] == pytest.approx(
        expected_loss, abs=1e-4)
    return resumed.stdout + resumed.stderr


def session_processes(session: int) -> list[str]:
    """The processes still alive in a session (dvc, the stage, its Prefect server, torchrun and its workers)."""
    table = subprocess.run(["ps", "-eo", "sid=,pid=,args="], capture_output=True, text=True, check=True).stdout
    return [line for line in table.splitlines() if line.split()[0] == str(session)]


def test_killed_then_ctrl_c_each_stop_leaves_complete_checkpoints_and_the_rerun_ends_as_uninterrupted(
        project: Path, uninterrupted) -> None:
    """Two stops in a row, each resumed from, as a user's bad day would have them.

    1. SIGKILL as checkpoint 10 is being written; then, as a kill in the middle of saving would leave it, a newer
       checkpoint folder without its completion marker.
    2. The re-run removes that one, resumes from a complete checkpoint, and is stopped by Ctrl-C: SIGINT to the
       foreground process group, as a terminal sends it. It runs without a Prefect server, as a plain `make run`
       does: the stage's temporary server gets the signal too and dies at once, and the stage must not wait on it.
       (SIGTERM, what `kill` and a Prefect cancellation send, takes the same path; the cancellation test in
       test_operations.py sends it through a real worker.)
    3. The last re-run ends with the uninterrupted run's weights and loss."""
    training = start_training(project)
    wait_for(project / "models/checkpoints/checkpoint-10")  # the Trainer has begun writing it
    kill(training)
    complete = (project / "models/checkpoints/checkpoint-10/tailor-complete").exists()
    partial = project / "models/checkpoints/checkpoint-15"
    partial.mkdir()
    (partial / "trainer_state.json").write_text("{")  # cut off mid-write, no completion marker

    env = {k: v for k, v in environment().items() if k != "PREFECT_API_URL"}
    training, stdout, stderr, stopped = ctrl_c_training(project, "checkpoint-20", env)
    log = stdout + stderr
    assert stopped < 20, f"took {stopped:.1f} s to stop"
    assert "removing models/checkpoints/checkpoint-15: it was not completely written" in log, log[-3000:]
    # Whether the kill beat the last file of checkpoint 10 is a race; each outcome has one right answer.
    if complete:
        assert "resuming from models/checkpoints/checkpoint-10, the last complete checkpoint" in log
    else:
        assert "removing models/checkpoints/checkpoint-10: it was not completely written" in log
    assert "`dvc repro` resumes from models/checkpoints/checkpoint-" in stderr, stderr[-3000:]
    deadline = time.monotonic() + 10  # the session's last processes are reaped within moments of dvc's exit
    while session_processes(training.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session_processes(training.pid) == []
    checkpoints = list((project / "models/checkpoints").glob("checkpoint-*"))
    assert checkpoints and all((c / "tailor-complete").is_file() for c in checkpoints)  # none half-written

    log = resume_and_compare(project, uninterrupted)
    assert "resuming from models/checkpoints/checkpoint-20, the last complete checkpoint" in log
