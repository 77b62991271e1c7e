"""Stage promote: apply the promotion gates; a passing candidate becomes the production model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.stage import run_stage, start_stage_run
from tasks.core.approaches import FINETUNED
from tasks.core.atomic_dir import restore_interrupted
from tasks.core.params import Params
from tasks.evaluate.score_files import ScoreFile
from tasks.release.lineage import build_lineage
from tasks.release.promotion import (
    decision_record,
    hold_production_place,
    production_gate,
    promotion_gates,
    publish_production,
)


@dataclass(frozen=True)
class Paths:
    base: Path  # the base model directory
    adapter: Path  # the candidate
    metrics: Path  # the comparison of every approach
    scores: Path  # per-example scores (paired comparison with production)
    validation: Path  # the validation result, recorded in the lineage
    production: Path  # the production model, replaced whole by a candidate that passes every gate
    decision: Path  # every gate with its value, threshold and status (a DVC metrics file)


@flow(name="promote", on_running=[start_stage_run])
def promote_flow(params: Params, paths: Paths) -> dict[str, Any]:
    """Decide, record the decision with every gate, and publish only a candidate that passes them all."""
    restore_interrupted(paths.production)
    metrics = json.loads(paths.metrics.read_text(encoding="utf-8"))
    scores = ScoreFile.read(paths.scores)
    against_production = production_gate(scores, paths.production, params.promote,
                                         params.evaluate.bootstrap_samples, params.evaluate.confidence, params.seed)
    gates = promotion_gates(metrics, params.promote, against_production)
    decision = decision_record(gates, params.promote.metric)
    if decision["promoted"]:
        validation_passed = json.loads(paths.validation.read_text(encoding="utf-8"))["success"]
        lineage = build_lineage(params.model_dump(mode="json", by_alias=True), metrics, validation_passed,
                                models=[paths.adapter, paths.base])
        production_scores = ScoreFile(scores.task, scores.examples, {FINETUNED: scores.approaches[FINETUNED]})
        publish_production(paths.adapter, paths.base, paths.production, lineage, gates, params.promote.merge,
                           production_scores)
    else:
        hold_production_place(paths.production, decision["reason"])
    paths.decision.parent.mkdir(parents=True, exist_ok=True)
    paths.decision.write_text(json.dumps(decision, indent=2) + "\n", encoding="utf-8")
    get_run_logger().info("promotion: %s (%s)", "promoted" if decision["promoted"] else "not promoted",
                          decision["reason"])
    create_markdown_artifact(
        key="promotion-decision",
        markdown="## Promotion decision\n\n" + "\n".join(
            f"- {g['status'].upper()} `{g['name']}`: {g['detail']}" for g in decision["gates"]),
        description=decision["reason"],
    )
    return decision


if __name__ == "__main__":
    run_stage(promote_flow, Paths)
