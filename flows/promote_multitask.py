"""Stage promote_multitask: the multi-task model promoted for each task where it passes a specialist's gates
(tasks/release/multitask_promotion.py), into a folder per task that then serves it instead of the specialist."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.stage import run_stage, start_stage_run
from tasks.core.approaches import MULTITASK
from tasks.core.params import Params
from tasks.evaluate.comparison import MAJORITY
from tasks.evaluate.prompting import Recipe
from tasks.evaluate.score_files import ScoreFile, Scores
from tasks.release.bundle import Bundle, stage_bundle
from tasks.release.lineage import build_lineage
from tasks.release.multitask_promotion import PROMOTED, RETIRED, decide_task, retire, serving_note
from tasks.release.promotion import publish_production


@dataclass(frozen=True)
class Paths:
    base: Path  # the base model directory
    adapter: Path  # the multi-task model
    training: Path  # its training summary (training time is a cost)
    matrix: Path  # the portfolio's cross-evaluation: forgetting, majority labels
    scores: Path  # the portfolio's per-example scores, per specialization
    reports: Path  # per specialization: validation.json, recorded in the lineage
    specialists: Path  # per specialization: its specialist in production
    production: Path  # per specialization: the multi-task model, where it serves that task
    decision: Path  # every task's gates and outcome (a DVC metrics file)


@flow(name="promote_multitask", on_running=[start_stage_run])
def promote_multitask_flow(params: Params, paths: Paths) -> dict[str, Any]:
    """Decide task by task; publish, keep or retire each task's folder; record every gate."""
    matrix = json.loads(paths.matrix.read_text(encoding="utf-8"))
    scores = {name: ScoreFile(raw["task"], raw["examples"], {a: Scores.from_dict(s) for a, s in raw["approaches"].items()})
              for name, raw in json.loads(paths.scores.read_text(encoding="utf-8")).items()}
    forgetting = {k: v for k, v in matrix["forgetting"][MULTITASK].items() if k != "within_limit"}
    trained = int(json.loads(paths.training.read_text(encoding="utf-8"))["tokens_trained"])
    paths.production.mkdir(parents=True, exist_ok=True)
    tasks = {}
    for name, column in matrix["tasks"].items():
        spec = params.specialized(name)
        served = paths.production / name
        decision = decide_task(spec.promote, scores[name], forgetting, trained, column.get(MAJORITY, {}).get("label"),
                               paths.specialists / name, served, spec.evaluate.bootstrap_samples,
                               spec.evaluate.confidence, params.seed)
        if decision.outcome == PROMOTED:
            validation = json.loads((paths.reports / name / "validation.json").read_text(encoding="utf-8"))
            # The params it was trained with: the top-level sections and its mixture, as its stages read them.
            lineage = build_lineage(params.model_dump(mode="json", by_alias=True), decision.metrics,
                                    validation["success"], models=[paths.adapter, paths.base])
            # A bundle like a specialist's: the adapter, asked as the portfolio evaluated it on this task.
            bundle = Bundle(MULTITASK, Recipe(spec.tokenize.system_prompt), spec.evaluate.max_new_tokens, "adapter")
            with tempfile.TemporaryDirectory(prefix="tailor-bundle-") as scratch:
                staged = Path(scratch) / "bundle"
                stage_bundle(staged, bundle, paths.adapter)
                publish_production(staged, bundle, paths.base, served, lineage, decision.gates, spec.promote.merge,
                                   decision.candidate)
        elif decision.outcome == RETIRED:
            retire(served)
        tasks[name] = decision.record(spec.promote.metric)
    outcomes = {name: record["outcome"] for name, record in tasks.items()}
    # What `tailor serve` will load (tasks/cli.serving_folder): the folders left with a model in them.
    serves = [name for name in tasks if (paths.production / name / "lineage.json").is_file()]
    (paths.production / "README.md").write_text(serving_note(serves), encoding="utf-8")
    record = {"serves": serves, "outcomes": outcomes, "tasks": tasks}
    paths.decision.parent.mkdir(parents=True, exist_ok=True)
    paths.decision.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    summary = ", ".join(f"{name}: {outcome}" for name, outcome in outcomes.items())
    get_run_logger().info("multi-task model: %s", summary)
    create_markdown_artifact(
        key="multitask-promotion",
        markdown="## The multi-task model, task by task\n\n" + "\n".join(
            f"- **{name}**: {r['outcome']} ({r['reason']})" for name, r in tasks.items()),
        description=summary,
    )
    return record


if __name__ == "__main__":
    run_stage(promote_multitask_flow, Paths)
