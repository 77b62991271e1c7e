"""tailor sweep before any trial runs: a sweep file that would compare unlike trials, a value the schema refuses, no
dev split, untracked data and a queue holding other experiments each stop it with one message; the choice is
written into params.yaml with its comments; Optuna's draws are seeded. (The trials themselves: tests/e2e/test_sweep.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import optuna
import pytest
import yaml

from benchmarks.harness import copy_repository, environment
from tasks.core.errors import UserError
from tasks.evaluate.sweep import SweepSpec, apply_choice, checked_params, grid, suggest, sweep

REPO = Path(__file__).resolve().parents[2]
LEARNING_RATES = {"params": {"finetune.learning_rate": [0.001, 0.01]}}


def spec_file(root: Path, spec: dict) -> Path:
    path = root / "lr.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_sweep_file_that_would_compare_unlike_trials_is_refused() -> None:
    with pytest.raises(ValueError, match="params.data.dev_pct: only tokenize and finetune knobs are swept"):
        SweepSpec.model_validate({"params": {"data.dev_pct": [5, 10]}})
    with pytest.raises(ValueError, match="a grid lists its values; a range needs search: optuna"):
        SweepSpec.model_validate({"params": {"finetune.learning_rate": {"low": 0.001, "high": 0.1}}})
    with pytest.raises(ValueError, match="above 0 with log"):
        SweepSpec.model_validate({"search": "optuna", "params": {"finetune.lora.r": {"low": 0, "high": 8,
                                                                                      "log": True}}})
    spec = SweepSpec.model_validate({"params": {"finetune.learning_rate": [0.001, 0.01], "finetune.lora.r": [8, 16]}})
    assert len(grid(spec)) == 4
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    with pytest.raises(UserError, match="finetune.learning_rate"):
        checked_params(raw, {"finetune.learning_rate": 2})  # above the schema's bound: stops before any trial


def test_optuna_draws_are_seeded_and_within_their_spans() -> None:
    spec = SweepSpec.model_validate({"search": "optuna", "params": {
        "finetune.learning_rate": {"low": 0.0001, "high": 0.01, "log": True},
        "finetune.lora.r": {"low": 4, "high": 64}, "finetune.warmup_ratio": [0.0, 0.1]}})

    def draws(seed: int) -> list[dict]:
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
        return [suggest(study.ask(), spec) for _ in range(3)]

    first = draws(42)
    assert first == draws(42) and first != draws(7)
    for settings in first:
        assert 0.0001 <= settings["finetune.learning_rate"] <= 0.01 and settings["finetune.warmup_ratio"] in (0, 0.1)
        assert isinstance(settings["finetune.lora.r"], int) and 4 <= settings["finetune.lora.r"] <= 64


def test_the_choice_is_written_into_params_yaml_with_its_comments(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    apply_choice(params, {"finetune.learning_rate": 0.0005, "finetune.lora.r": 32}, 6)
    text, shipped = params.read_text(), (REPO / "params.yaml").read_text()
    assert [line for line in shipped.splitlines() if line.lstrip().startswith("#")] == \
        [line for line in text.splitlines() if line.lstrip().startswith("#")]
    written = yaml.safe_load(text)
    assert written["finetune"]["learning_rate"] == 0.0005 and written["finetune"]["lora"]["r"] == 32
    assert written["evaluate"]["configurations_compared"] == 6
    written["finetune"]["learning_rate"], written["finetune"]["lora"]["r"] = 0.002, 16
    written["evaluate"]["configurations_compared"] = 1
    assert written == yaml.safe_load(shipped)  # nothing else moved


def test_what_would_spoil_the_trials_stops_the_sweep_before_any(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    root = copy_repository(tmp_path / "repo")
    monkeypatch.chdir(root)
    monkeypatch.setenv("PATH", environment()["PATH"])
    with pytest.raises(UserError, match="there is none: set data.dev_pct"):
        sweep(spec_file(root, LEARNING_RATES), root)

    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["data"].update(dev_pct=10, train="data/raw/mine.jsonl")
    (root / "data/raw").mkdir(parents=True)
    (root / "data/raw/mine.jsonl").write_text((root / "data/demo/train.jsonl").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(UserError, match="data/raw/mine.jsonl is tracked by neither git nor DVC.*dvc add"):
        sweep(spec_file(root, LEARNING_RATES), root)

    raw["data"]["train"] = "data/demo/train.jsonl"
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run([*git, "commit", "-qam", "a dev split"], cwd=root, check=True)
    subprocess.run(["dvc", "exp", "run", "--queue", "--name", "mine", "-S", "finetune.max_steps=3"], cwd=root,
                   check=True, capture_output=True)
    with pytest.raises(UserError, match="DVC's queue already holds mine, which would run with the trials"):
        sweep(spec_file(root, LEARNING_RATES), root)
