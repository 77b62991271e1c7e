"""Stage promote: apply the promotion gates; a passing candidate becomes models/production."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.stage import git_revision, log_run_labels, run_stage
from tasks.atomic_dir import restore_interrupted
from tasks.lineage import build_lineage
from tasks.params import Params
from tasks.promotion import (
    decision_record,
    hold_production_place,
    production_gate,
    promotion_gates,
    publish_production,
)

BASE_DIR = Path("models/base")
CANDIDATE_DIR = Path("models/adapter")
METRICS = Path("reports/metrics.json")
SCORES = Path("reports/scores.json")
VALIDATION = Path("reports/validation.json")
PRODUCTION_DIR = Path("models/production")
DECISION = Path("reports/promotion.json")
LINEAGE_OUTPUTS = ["models/base", "data/validated", "data/tokenized", "models/adapter"]


@flow(name="promote", on_running=[log_run_labels])
def promote_flow(params: Params) -> dict[str, Any]:
    """Decide, record the decision with every gate, and publish only a candidate that passes them all."""
    restore_interrupted(PRODUCTION_DIR)
    metrics = json.loads(METRICS.read_text(encoding="utf-8"))
    scores = json.loads(SCORES.read_text(encoding="utf-8"))
    against_production = production_gate(scores, PRODUCTION_DIR, params.promote, params.evaluate.bootstrap_samples,
                                         params.evaluate.confidence, params.seed)
    gates = promotion_gates(metrics, params.promote, against_production)
    decision = decision_record(gates, params.promote.metric)
    if decision["promoted"]:
        validation_passed = json.loads(VALIDATION.read_text(encoding="utf-8"))["success"]
        lineage = build_lineage(params.model_dump(mode="json", by_alias=True), metrics, validation_passed,
                                [str(params.data.train), str(params.data.eval), *LINEAGE_OUTPUTS], git_revision())
        eval_scores = {"task": scores["task"], "examples": scores["examples"],
                       "scores": scores["approaches"]["finetuned"]}
        publish_production(CANDIDATE_DIR, BASE_DIR, PRODUCTION_DIR, lineage, gates, params.promote.merge,
                           eval_scores)
    else:
        hold_production_place(PRODUCTION_DIR, decision["reason"])
    DECISION.parent.mkdir(parents=True, exist_ok=True)
    DECISION.write_text(json.dumps(decision, indent=2) + "\n", encoding="utf-8")
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
    run_stage(promote_flow)
