"""The multi-task model's promotion, task by task, on made-up scores: it must be the recommendation among the
baselines, beat the specialist in production and its own earlier version; an earlier version that the specialist now beats is
retired, one that still beats it serves on."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.core.params import PromoteParams
from tasks.evaluate.score_files import ScoreFile, Scores
from tasks.release.multitask_promotion import KEPT, NOT_PROMOTED, PROMOTED, RETIRED, decide_task, retire, serving_note
from tasks.release.promotion import EVAL_SCORES

REFERENCES = ["os", "logging", "os", "zipfile"] * 10
EXAMPLES = [{"prompt": f"q{i}", "response": r} for i, r in enumerate(REFERENCES)]
PROMOTE = PromoteParams(metric="accuracy")
FORGETTING = {"base_perplexity": 20.0, "finetuned_perplexity": 21.0, "relative_increase": 0.05}


def answers(correct: int) -> Scores:
    """The first `correct` of the 40 examples answered right, the rest with a wrong label."""
    predictions = REFERENCES[:correct] + ["socket"] * (len(REFERENCES) - correct)
    return Scores(nll=[1.0] * 40, target_tokens=[1] * 40, prompt_tokens=[20] * 40, predictions=predictions)


def portfolio_scores(multitask: int) -> ScoreFile:
    """One task's portfolio scores: the baselines at 8, 10 and 12 of 40, a specialist, the multi-task model."""
    return ScoreFile("classification", EXAMPLES, {"generalist": answers(8), "prompted": answers(10),
                                                  "retrieval": answers(12), "specialist:a": answers(30),
                                                  "multitask": answers(multitask)})


def production(folder: Path, correct: int) -> Path:
    ScoreFile("classification", EXAMPLES, {"finetuned": answers(correct)}).write(folder / EVAL_SCORES)
    (folder / "lineage.json").write_text("{}")
    return folder


def decide(tmp_path: Path, multitask: int, forgetting: dict[str, float] = FORGETTING):
    return decide_task(PROMOTE, portfolio_scores(multitask), forgetting, 100.0, "os", tmp_path / "specialist",
                       tmp_path / "served", samples=100, confidence=0.95, seed=0)


def test_it_is_promoted_where_it_beats_the_specialist_in_production_and_the_baselines(tmp_path: Path) -> None:
    production(tmp_path / "specialist", 30)
    decision = decide(tmp_path, 38)
    assert decision.outcome == PROMOTED
    gates = {g.name: g.status for g in decision.gates}
    assert gates == {"finite_metrics": "pass", "recommended": "pass", "specializes": "pass",
                     "beats_production": "pass", "forgetting": "pass", "beats_multitask_production": "skipped"}
    assert decision.metrics["best_baseline"] == "retrieval" and decision.metrics["finetuned"]["accuracy"] == 0.95
    assert decision.metrics["majority_class"]["scores"]["accuracy"]["value"] == 0.5
    assert list(decision.candidate.approaches) == ["finetuned"]  # what its production folder records
    assert decision.record("accuracy")["reason"] == "all gates passed; it serves this task"


@pytest.mark.parametrize(("multitask", "forgetting", "failed"), [
    (31, FORGETTING, ["beats_production"]),  # about the specialist: not better by the margin
    (38, {**FORGETTING, "relative_increase": 0.9}, ["forgetting"]),
])
def test_it_is_not_promoted_where_a_gate_fails(tmp_path: Path, multitask: int, forgetting: dict[str, float],
                                              failed: list[str]) -> None:
    production(tmp_path / "specialist", 30)
    decision = decide(tmp_path, multitask, forgetting)
    assert decision.outcome == NOT_PROMOTED
    assert [g.name for g in decision.gates if not g.passed] == failed
    assert decision.record("accuracy")["reason"] == f"failed: {failed[0]}; it does not serve this task"


def test_without_a_specialist_in_production_it_must_be_the_recommendation_among_the_baselines(tmp_path: Path) -> None:
    assert decide(tmp_path, 38).outcome == PROMOTED
    decision = decide(tmp_path, 13)  # the best, but not measurably better than retrieval, which needs no adapter
    assert decision.outcome == NOT_PROMOTED and [g.name for g in decision.gates if not g.passed] == ["recommended"]


def test_an_earlier_version_serves_on_while_it_beats_the_specialist_and_is_retired_once_it_does_not(
        tmp_path: Path) -> None:
    production(tmp_path / "served", 38)
    production(tmp_path / "specialist", 30)
    decision = decide(tmp_path, 36)  # better than the specialist, not than the earlier version
    assert decision.outcome == KEPT
    assert [g.name for g in decision.gates if not g.passed] == ["beats_multitask_production"]
    assert decision.record("accuracy")["earlier_version_vs_specialist"]["status"] == "pass"

    production(tmp_path / "specialist", 40)  # a newer specialist, better than both
    decision = decide(tmp_path, 36)
    assert decision.outcome == RETIRED
    assert [g.name for g in decision.gates if not g.passed] == ["beats_production", "beats_multitask_production"]
    assert decision.record("accuracy")["reason"].endswith("no longer beats the specialist in production and was "
                                                          "retired")
    retire(tmp_path / "served")
    assert not (tmp_path / "served").exists() and not (tmp_path / "served.tmp").exists()


def test_the_production_folder_says_which_tasks_it_serves() -> None:
    assert "It serves a, c: one folder each" in serving_note(["a", "c"])
    assert "It serves no task; each task is served by its specialist" in serving_note([])
