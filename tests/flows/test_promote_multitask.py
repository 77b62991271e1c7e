"""The promote_multitask stage's flow on a portfolio's made-up results (a real LoRA adapter of the tiny model): the
multi-task model is published for the task it wins, with its model card, lineage and held-out scores, kept on a
re-run, and retired once a better specialist is in production (which folder `tailor serve` then loads:
tests/flows/test_pipeline.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from flows.promote_multitask import Paths, promote_multitask_flow
from tasks.core.params import parse_params
from tasks.evaluate.score_files import ScoreFile, Scores
from tasks.release.promotion import EVAL_SCORES

REPO = Path(__file__).resolve().parents[2]
REFERENCES = ["os", "logging", "os", "zipfile"] * 10
EXAMPLES = [{"prompt": f"q{i}", "response": r} for i, r in enumerate(REFERENCES)]


def answers(correct: int) -> Scores:
    predictions = REFERENCES[:correct] + ["socket"] * (len(REFERENCES) - correct)
    return Scores(nll=[1.0] * 40, target_tokens=[1] * 40, prompt_tokens=[20] * 40, predictions=predictions)


def specialist(folder: Path, correct: int) -> None:
    ScoreFile("classification", EXAMPLES, {"finetuned": answers(correct)}).write(folder / EVAL_SCORES)
    (folder / "lineage.json").write_text("{}")


@pytest.fixture
def stage(tmp_path: Path, tiny_model_dir: Path, prefect_api: str) -> tuple[object, Paths]:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["evaluate"]["bootstrap_samples"] = 100
    params = parse_params(raw, "params.yaml").model_copy(update={"multitask": {"all": raw["multitask"]["all"]}})
    adapter = tmp_path / "adapter"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)
    paths = Paths(base=tiny_model_dir, adapter=adapter, training=tmp_path / "training.json",
                  matrix=tmp_path / "portfolio.json", scores=tmp_path / "scores.json", reports=tmp_path / "reports",
                  specialists=tmp_path / "specialists", production=tmp_path / "production",
                  decision=tmp_path / "promotion.json")
    paths.training.write_text(json.dumps({"tokens_trained": 12000}))
    forgetting = {"base_perplexity": 20.0, "finetuned_perplexity": 21.0, "relative_increase": 0.05,
                  "within_limit": True}
    paths.matrix.write_text(json.dumps({"tasks": {"classification": {"majority_class": {"label": "os"}}},
                                        "forgetting": {"multitask": forgetting}}))
    approaches = {"generalist": answers(8), "prompted": answers(10), "retrieval": answers(12),
                  "specialist:classification": answers(30), "multitask": answers(38)}
    paths.scores.write_text(json.dumps({"classification": ScoreFile("classification", EXAMPLES, approaches).as_dict()}))
    (paths.reports / "classification").mkdir(parents=True)
    (paths.reports / "classification/validation.json").write_text(json.dumps({"success": True}))
    specialist(paths.specialists / "classification", 30)
    return params, paths


def test_the_multitask_model_serves_the_task_it_wins_until_a_better_specialist_is_promoted(
        stage: tuple[object, Paths]) -> None:
    params, paths = stage
    decision = promote_multitask_flow(params, paths)
    assert decision["outcomes"] == {"classification": "promoted"} and decision["serves"] == ["classification"]
    assert json.loads(paths.decision.read_text()) == decision
    served = paths.production / "classification"
    assert (served / "adapter_config.json").is_file() and (served / "tokenizer_config.json").is_file()
    lineage = json.loads((served / "lineage.json").read_text())
    assert lineage["metrics"]["finetuned"]["macro_f1"] > lineage["metrics"]["retrieval"]["macro_f1"]
    assert lineage["params"]["multitask"] == {"all": params.multitask["all"]}  # what it was trained with
    assert ScoreFile.read(served / EVAL_SCORES).approaches["finetuned"].predictions == answers(38).predictions
    card = (served / "README.md").read_text()
    assert "PASS beats_production" in card and "SKIPPED beats_multitask_production" in card
    assert "It serves classification" in (paths.production / "README.md").read_text()

    # The same candidate again: it does not beat itself, and its earlier version (itself) still beats the
    # specialist, so it serves on.
    assert promote_multitask_flow(params, paths)["outcomes"] == {"classification": "kept"}
    assert (served / "lineage.json").is_file()

    specialist(paths.specialists / "classification", 40)  # a newer specialist, better than the multi-task model
    decision = promote_multitask_flow(params, paths)
    assert decision["outcomes"] == {"classification": "retired"} and decision["serves"] == []
    assert not served.exists() and "It serves no task" in (paths.production / "README.md").read_text()
