"""GRPO end to end on the tiny model: a classification file (the demo portfolio's rows, a user's own path) through
`dvc exp run` with finetune.method grpo, its rewards the task's accuracy, a format check and a custom reward of the
shipped rewards.py; every approach scored with the task's metrics and intervals, promotion decided. Then Ctrl-C
in the middle of training, and the re-run resumes and ends with the uninterrupted run's weights."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from stage_runner import (
    FINETUNE_AGAIN,
    TINY_PARAMS,
    ctrl_c_training,
    pipeline_stages,
    run,
    set_params,
    tiny_project,
    use_raw_data,
)

from benchmarks.harness import stages_run

pytestmark = pytest.mark.slow
CLASSIFICATION = Path(__file__).resolve().parents[2] / "data" / "portfolio" / "classification"
ADAPTER = "models/adapter/adapter_model.safetensors"
LABELS = ["asyncio", "datetime", "decimal", "logging", "os", "socket", "tarfile", "zipfile"]
REWARDS = {"accuracy": 1.0, "in_label_set": 0.2, "brevity": 0.2}


def first_rows(split: str, rows: int) -> str:
    lines = (CLASSIFICATION / f"{split}.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    return "".join(lines[:rows])


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path,
             prefect_api: str) -> tuple[Path, subprocess.CompletedProcess[str]]:
    root = tiny_project(tmp_path_factory.mktemp("grpo"), tiny_model_dir, 0, 0, **TINY_PARAMS)
    use_raw_data(root, first_rows("train", 96), first_rows("eval", 16), format="instruction")
    set_params(root, "validate", allowed_responses=LABELS)
    set_params(root, "evaluate", task="classification")
    set_params(root, "promote", metric="accuracy")
    params = (root / "params.yaml").read_text()
    (root / "params.yaml").write_text(params.replace("rewards:\n      rouge_l: 1.0\n      ends_turn: 0.2\n",
                                                     "rewards: " + json.dumps(REWARDS) + "\n"))
    run(root, "git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qam", "classification data")
    result = run(root, "dvc", "exp", "run", "-S", "finetune.method=grpo", "-S", "finetune.grpo.max_completion_length=8",
                 "-S", "finetune.batch_size=8")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root, result


def test_grpo_runs_every_stage_on_its_rewards_and_is_evaluated_like_every_approach(grpo_run) -> None:
    root, result = grpo_run
    assert sorted(stages_run(result.stdout)) == sorted(pipeline_stages(root))
    training = json.loads((root / "reports/training.json").read_text())
    assert training["steps"] == TINY_PARAMS["finetune"]["max_steps"]
    assert 0 <= training["train_reward_mean"] <= sum(REWARDS.values()) and training["train_reward_std"] >= 0
    assert 0 < training["train_completion_length"] <= 8 and 0 <= training["train_clipped_ratio"] <= 1
    # DVCLive's curves: the total reward, each reward, and the answers' length, step by step.
    curves = root / "reports/training/plots/metrics"
    for curve in ("reward", "reward_std", "rewards/accuracy/mean", "rewards/brevity/mean", "completions/mean_length"):
        assert (curves / f"{curve}.tsv").is_file(), curve
    assert not (curves / "step_time.tsv").exists()  # clock readings would change dvc.lock on every run
    # The rewards moved the adapter (a group whose answers all score alike teaches nothing).
    weights = load_file(root / ADAPTER)
    assert any(name.endswith("lora_B.weight") and weights[name].abs().sum() > 0 for name in weights)

    metrics = json.loads((root / "reports/metrics.json").read_text())
    for approach in ("generalist", "prompted", "retrieval", "finetuned", "finetuned+retrieval"):
        for metric in ("accuracy", "macro_f1"):
            row = metrics[approach]
            assert row[f"{metric}_ci_low"] <= row[metric] <= row[f"{metric}_ci_high"], (approach, metric)
    assert "accuracy" in metrics["comparisons"]["finetuned_vs_generalist"]
    assert "decision" in metrics
    promotion = json.loads((root / "reports/promotion.json").read_text())
    assert promotion["metric"] == "accuracy" and promotion["approach"] == metrics["decision"]["recommended"]


def test_ctrl_c_during_grpo_then_the_rerun_resumes_and_ends_with_the_uninterrupted_weights(grpo_run) -> None:
    root, _ = grpo_run
    uninterrupted = load_file(root / ADAPTER)
    shutil.rmtree(root / "models" / "checkpoints", ignore_errors=True)
    ctrl_c_training(root, "checkpoint-4")

    resumed = run(root, *FINETUNE_AGAIN)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "resuming from models/checkpoints/checkpoint-" in resumed.stdout + resumed.stderr
    got = load_file(root / ADAPTER)
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(got[name], tensor, atol=1e-5, rtol=1e-4)
