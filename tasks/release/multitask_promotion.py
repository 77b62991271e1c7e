"""Promotion of a multi-task model, task by task: on each task's held-out set it faces the gates a specialist
faces there (the best baseline by the margin, general-text forgetting, the model now serving the task), and for
each task it passes it is published into a folder of its own, which then serves that task instead of the
specialist.

What serves a task is the multi-task model's folder for it when there is one, else the task's specialist in
production; so the multi-task model must beat both the specialist in production and its own earlier version for
that task, and an earlier version that a newer specialist now beats is retired (the specialist serves the task
again). Each decision is taken on the scores of the same held-out examples, paired.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tasks.core.approaches import BASELINES, FINETUNED, MULTITASK
from tasks.core.atomic_dir import restore_interrupted, staging_dir
from tasks.core.params import PromoteParams
from tasks.evaluate.comparison import compare
from tasks.evaluate.score_files import ScoreFile
from tasks.release.promotion import EVAL_SCORES, Gate, decision_record, production_gate, promotion_gates

PROMOTED, KEPT, RETIRED, NOT_PROMOTED = "promoted", "kept", "retired", "not promoted"


@dataclass(frozen=True)
class TaskDecision:
    """The multi-task model's decision on one task: its gates, and what happens to the folder that serves it."""

    outcome: str  # promoted | kept (an earlier version still serves) | retired | not promoted
    gates: list[Gate]
    metrics: dict[str, Any]  # the multi-task model as `finetuned` against the task's baselines (a metrics.json)
    candidate: ScoreFile  # the multi-task model's per-example scores on the task, as `finetuned`
    kept_because: Gate | None = None  # for an earlier version: it against the specialist in production

    def record(self, metric: str) -> dict[str, Any]:
        failed = "failed: " + ", ".join(g.name for g in self.gates if not g.passed)
        reason = {PROMOTED: "all gates passed; it serves this task",
                  NOT_PROMOTED: f"{failed}; it does not serve this task",
                  KEPT: f"{failed}; its earlier version still beats the specialist in production and serves on",
                  RETIRED: f"{failed}; its earlier version no longer beats the specialist in production and was "
                           "retired"}[self.outcome]
        record = {**decision_record(self.gates, metric, MULTITASK, "one adapter for every task of the mixture"),
                  "outcome": self.outcome, "reason": reason}
        if self.kept_because is not None:
            record["earlier_version_vs_specialist"] = self.kept_because.as_dict()
        return record


def as_candidate(scores: ScoreFile) -> ScoreFile:
    """The portfolio's scores on one task with the multi-task model as the candidate (`finetuned`) among the
    baselines, the shape every comparison and gate of a specialist reads."""
    approaches = {a: scores.approaches[a] for a in BASELINES if a in scores.approaches}
    return ScoreFile(scores.task, scores.examples, {**approaches, FINETUNED: scores.approaches[MULTITASK]})


def decide_task(promote: PromoteParams, scores: ScoreFile, forgetting: dict[str, float], training_tokens: int,
                majority: str | None, specialist: Path, served: Path, samples: int, confidence: float,
                seed: int) -> TaskDecision:
    """The multi-task model on one task, with that specialization's promotion params (`scores`: the portfolio's
    scores on its held-out set; `specialist`: its specialist's production folder; `served`: the multi-task
    model's folder for it)."""
    restore_interrupted(served)
    candidate = as_candidate(scores)
    metrics = compare(candidate, training_tokens, forgetting, promote, samples, confidence, seed,
                      majority_label=majority).record()
    production_only = ScoreFile(candidate.task, candidate.examples, {FINETUNED: candidate.approaches[FINETUNED]})
    # Recommended among the baselines, not only unbeaten: where a cheaper baseline ties with it, the task is
    # better served without an adapter (tasks/evaluate/decision.py).
    gates = promotion_gates(metrics, promote, FINETUNED, production_gate(production_only, specialist, promote,
                                                                         samples, confidence, seed),
                            recommended_only=True)
    gates.append(replace(production_gate(production_only, served, promote, samples, confidence, seed),
                         name="beats_multitask_production"))
    if all(g.passed for g in gates):
        return TaskDecision(PROMOTED, gates, metrics, production_only)
    if not (served / EVAL_SCORES).is_file():
        return TaskDecision(NOT_PROMOTED, gates, metrics, production_only)
    # The earlier version serves on only while it still beats the specialist now in production.
    earlier = production_gate(ScoreFile.read(served / EVAL_SCORES), specialist, promote, samples, confidence, seed)
    return TaskDecision(KEPT if earlier.passed else RETIRED, gates, metrics, production_only, earlier)


def retire(served: Path) -> None:
    """Remove a folder that no longer serves its task, by one rename first, so that a crash never leaves half
    of it where `tailor serve` would load it."""
    staging = staging_dir(served)
    shutil.rmtree(staging, ignore_errors=True)
    served.rename(staging)
    shutil.rmtree(staging)


def serving_note(serving: list[str]) -> str:
    """The production folder's README: which tasks the multi-task model serves (one folder each)."""
    return ("# The multi-task model in production\n\n"
            + (f"It serves {', '.join(serving)}: one folder each, with its model card, lineage and held-out "
               "scores; every other task" if serving else "It serves no task; each task")
            + " is served by its specialist in production (models/specializations/production/<name>). The "
              "decision per task, with every gate: reports/multitask/<name>/promotion.json.\n")
