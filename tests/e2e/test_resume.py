"""A training run killed with SIGKILL resumes from its last complete checkpoint and ends where an
uninterrupted run ends; a checkpoint cut off while being written is removed, never resumed from."""

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

from stage_runner import environment, run, tiny_project

pytestmark = pytest.mark.slow
ADAPTER = "models/adapter/adapter_model.safetensors"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, prefect_api: str) -> Path:
    root = tiny_project(tmp_path_factory.mktemp("resume"), tiny_model_dir, 400, 16,
                        finetune={"max_steps": 120, "save_steps": 40, "logging_steps": 10, "learning_rate": 0.02})
    prepared = run(root, "dvc", "repro", "tokenize")
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    return root


def wait_for(path: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_sigkilled_training_resumes_from_the_last_complete_checkpoint(project: Path) -> None:
    reference = run(project, "dvc", "repro", "--no-run-cache", "finetune")
    assert reference.returncode == 0, reference.stdout[-3000:]
    expected = load_file(project / ADAPTER)
    expected_loss = json.loads((project / "reports/training.json").read_text())["final_loss"]

    shutil.rmtree(project / "models" / "checkpoints")
    interrupted = subprocess.Popen(["dvc", "repro", "--force", "--single-item", "--no-run-cache", "finetune"],
                                   cwd=project, env=environment(), start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(project / "models/checkpoints/checkpoint-40/tailor-complete")
    os.killpg(interrupted.pid, signal.SIGKILL)  # dvc and the stage process, a few steps after checkpoint 40
    interrupted.wait()
    assert not (project / "models/checkpoints/checkpoint-80").exists(), "the kill came too late to test a resume"
    # What a kill while saving leaves behind: a newer checkpoint folder without its completion marker.
    shutil.copytree(project / "models/checkpoints/checkpoint-40", project / "models/checkpoints/checkpoint-80")
    (project / "models/checkpoints/checkpoint-80/tailor-complete").unlink()

    resumed = run(project, "dvc", "repro", "--no-run-cache", "finetune")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert "removing models/checkpoints/checkpoint-80: it was not completely written" in log
    assert "resuming from models/checkpoints/checkpoint-40, the last complete checkpoint" in log
    state = json.loads((project / "models/checkpoints/checkpoint-120/trainer_state.json").read_text())
    assert state["global_step"] == 120
    # Same weights and loss as the uninterrupted run, within float tolerance (CPU, same seed and data order).
    got = load_file(project / ADAPTER)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, atol=1e-5, rtol=1e-4)
    assert json.loads((project / "reports/training.json").read_text())["final_loss"] == pytest.approx(
        expected_loss, abs=1e-4)
