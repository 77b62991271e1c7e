"""Preference pairs end to end: a file of prompts with a chosen and a rejected answer (data/demo_preference, under
the user's own column names) through `dvc exp run` with `finetune.method: dpo`: validated, tokenized as pairs,
trained with TRL's DPOTrainer on a LoRA adapter, and every approach scored on preference accuracy and margin with
intervals, then promoted (or not) on preference accuracy. Starting DPO from an SFT adapter is
tests/tasks/test_training.py's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from stage_runner import TINY_PARAMS, pipeline_stages, run, set_params, tiny_project, use_raw_data

from benchmarks.harness import stages_run

pytestmark = pytest.mark.slow
PAIRS = Path(__file__).resolve().parents[2] / "data" / "demo_preference"


def renamed(split: str, rows: int) -> str:
    """The first pairs of a demo split with the column names a user's export might have."""
    lines = (PAIRS / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[:rows]
    return "".join(json.dumps({"question": p["prompt"], "good": p["chosen"], "bad": p["rejected"]}) + "\n"
                   for p in map(json.loads, lines))


@pytest.fixture(scope="module")
def preference_project(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, prefect_api: str) -> Path:
    root = tiny_project(tmp_path_factory.mktemp("preference"), tiny_model_dir, 0, 0, **TINY_PARAMS)
    use_raw_data(root, renamed("train", 160), renamed("eval", 16), format="preference",
                 columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    # The longest prompts leave no room for an answer: those pairs are dropped and counted (3 of 160 train pairs,
    # one of the 16 held out: no approach is scored on it).
    set_params(root, "tokenize", max_length=96, max_dropped_pct=10.0)
    run(root, "git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qam", "preference data")
    return root


def test_dpo_on_preference_pairs_runs_every_stage_and_scores_every_approach(preference_project: Path) -> None:
    result = run(preference_project, "dvc", "exp", "run", "-S", "finetune.method=dpo", "-S", "finetune.dpo.beta=0.2",
                 "-S", "promote.metric=preference_accuracy")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(stages_run(result.stdout)) == sorted(pipeline_stages(preference_project))

    tokens = json.loads((preference_project / "reports/tokenize.json").read_text())["train"]
    assert tokens["examples"] + tokens["dropped"] == 160 and tokens["dropped"] > 0
    assert tokens["rejected_answer_tokens"] > 0
    training = json.loads((preference_project / "reports/training.json").read_text())
    assert training["steps"] == TINY_PARAMS["finetune"]["max_steps"] and "train_reward_accuracy" in training

    metrics = json.loads((preference_project / "reports/metrics.json").read_text())
    for approach in ("generalist", "prompted", "retrieval", "finetuned"):
        row = metrics[approach]
        for metric in ("preference_accuracy", "preference_margin", "rouge_l"):
            assert row[f"{metric}_ci_low"] <= row[metric] <= row[f"{metric}_ci_high"], (approach, metric)
        assert 0 <= row["preference_accuracy"] <= 1
    # DPO moved the adapter: the fine-tuned model's margins differ from the base model's (the generalist).
    assert metrics["finetuned"]["preference_margin"] != metrics["generalist"]["preference_margin"]
    assert "preference_accuracy" in metrics["comparisons"]["finetuned_vs_generalist"]
    scores = json.loads((preference_project / "reports/scores.json").read_text())
    assert len(scores["examples"]) == 15
    assert all(len(s["rejected_nll"]) == len(scores["examples"]) for s in scores["approaches"].values())
    report = (preference_project / "reports/specialization.md").read_text()
    assert "preference_accuracy" in report
    decision = json.loads((preference_project / "reports/promotion.json").read_text())
    assert decision["metric"] == "preference_accuracy"
