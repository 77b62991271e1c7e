"""Stage promote: the approach the evaluation recommends (or the one params name) faces the promotion gates; it is
staged as a bundle (tasks/release/bundle.py), `tailor serve` answers held-out examples from it and must answer them
exactly as evaluation did, and a bundle that passes everything becomes the production model."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.stage import run_stage, start_stage_run
from tasks.core.approaches import ADAPTED
from tasks.core.atomic_dir import restore_interrupted
from tasks.core.errors import UserError
from tasks.core.params import RECOMMENDED, Params
from tasks.data.tokenization import answerable
from tasks.evaluate.inference import held_out
from tasks.evaluate.prompting import recipes, retrieve, scored_prompts, searched_texts
from tasks.evaluate.score_files import ScoreFile
from tasks.release.bundle import Bundle, stage_bundle
from tasks.release.lineage import build_lineage
from tasks.release.promotion import (
    Expected,
    Gate,
    candidate_of,
    decision_record,
    hold_production_place,
    parity_gate,
    production_gate,
    promotion_gates,
    publish_production,
)


@dataclass(frozen=True)
class Paths:
    base: Path  # the base model directory
    adapter: Path  # the fine-tuned model: LoRA adapter or full model
    validated: Path  # eval.parquet (the parity check's examples) and train.parquet (what retrieval shows)
    index: Path  # the retrieval index of the training examples
    metrics: Path  # the comparison of every approach, with the decision
    scores: Path  # per-example scores and answers (paired comparison with production, parity)
    validation: Path  # the validation result, recorded in the lineage
    production: Path  # the production bundle, replaced whole by a candidate that passes every gate
    decision: Path  # every gate with its value, threshold and status (a DVC metrics file)


def parity(params: Params, paths: Paths, bundle: Bundle, staged: Path, scores: ScoreFile, train: pd.DataFrame) -> Gate:
    """`tailor serve` on the staged bundle against evaluation, on the first promote.parity_examples held-out
    examples whose evaluated prompt was not truncated (serving never truncates); `train` is what retrieval and the
    prompted recipe show."""
    from transformers import AutoTokenizer  # the modeling stack, only for a candidate that passed every other gate

    from tasks.release.serving import served_answers

    if params.task() == "text":
        if bundle.approach in ADAPTED and not bundle.recipe.retrieval_k:
            return Gate("parity", None, 0, "skipped", "plain text: evaluation generated no answers to compare")
        return Gate("parity", None, 0, "fail", f"a plain-text specialization ships its fine-tuned model alone: a "
                    f"chat request carries no passage for {bundle.approach}'s context; set promote.approach: finetuned")
    tokenizer = AutoTokenizer.from_pretrained(paths.base)
    shape = params.data.shape
    evaluation = answerable(held_out(paths.validated, params)[0], tokenizer, shape,
                            params.tokenize.system_prompt, params.tokenize.max_length)
    nearest = (retrieve(paths.index, searched_texts(evaluation, shape), bundle.recipe.retrieval_k)
               if bundle.recipe.retrieval_k else [])
    dataset = scored_prompts(tokenizer, evaluation, train, bundle.recipe, nearest, params)
    evaluated = scores.approaches[bundle.approach]
    rows = [i for i, truncated in enumerate(dataset["truncated"]) if not truncated][:params.promote.parity_examples]
    if not rows:
        return Gate("parity", None, 0, "fail", "every held-out conversation was cut to tokenize.max_length for "
                    "evaluation, and serving never cuts one: nothing shows that the served bundle answers as "
                    "evaluated; raise tokenize.max_length")
    expected = [Expected(i, dataset[i]["input_ids"][:dataset[i]["prompt_length"]], evaluated.predictions[i],
                         evaluated.ended[i]) for i in rows]
    conversations = [json.loads(evaluation["messages"].iloc[i])[:-1] for i in rows]  # up to the answer
    return parity_gate(expected, served_answers(staged, paths.base, conversations))


@flow(name="promote", on_running=[start_stage_run])
def promote_flow(params: Params, paths: Paths) -> dict[str, Any]:
    """Decide, record the decision with every gate, and publish only a candidate that passes them all."""
    restore_interrupted(paths.production)
    if params.evaluate.split == "dev":
        raise UserError("evaluate.split is dev: the candidate was scored on the split it was chosen on, which "
                        "certifies nothing; set evaluate.split: test and run dvc repro, so that the test split "
                        "scores it once (the production model stays as it is)")
    metrics = json.loads(paths.metrics.read_text(encoding="utf-8"))
    scores = ScoreFile.read(paths.scores)
    candidate = candidate_of(metrics, params.promote)
    candidate_scores = ScoreFile(scores.task, scores.examples, {candidate: scores.approaches[candidate]})
    against_production = production_gate(candidate_scores, paths.production, params.promote,
                                         params.evaluate.bootstrap_samples, params.evaluate.confidence, params.seed)
    gates = promotion_gates(metrics, params.promote, candidate, against_production)
    why = (metrics["recommendation"] if params.promote.approach == RECOMMENDED
           else f"named by promote.approach (the evaluation recommends {metrics['decision']['recommended']})")
    train = pd.read_parquet(paths.validated / "train.parquet")
    bundle = Bundle(candidate, recipes(params, train)[candidate], params.evaluate.max_new_tokens,
                    "adapter" if candidate in ADAPTED else "base")
    with tempfile.TemporaryDirectory(prefix="tailor-bundle-") as scratch:
        staged = Path(scratch) / "bundle"
        stage_bundle(staged, bundle, paths.adapter if candidate in ADAPTED else None, paths.index,
                     paths.validated / "train.parquet")
        gates.append(parity(params, paths, bundle, staged, scores, train) if all(g.passed for g in gates) else
                     Gate("parity", None, 0, "skipped", "not checked: another gate failed"))
        decision = decision_record(gates, params.promote.metric, candidate, why)
        if decision["promoted"]:
            validation_passed = json.loads(paths.validation.read_text(encoding="utf-8"))["success"]
            # What the bundle answers with: the weights, and the index retrieval searches.
            models = [*([paths.adapter] if candidate in ADAPTED else []), paths.base,
                      *([paths.index] if bundle.recipe.retrieval_k else [])]
            lineage = build_lineage(params.model_dump(mode="json", by_alias=True), metrics, validation_passed,
                                    models=models)
            publish_production(staged, bundle, paths.base, paths.production, lineage, gates, params.promote.merge,
                               candidate_scores)
        else:
            hold_production_place(paths.production, decision["reason"])
    paths.decision.parent.mkdir(parents=True, exist_ok=True)
    paths.decision.write_text(json.dumps(decision, indent=2) + "\n", encoding="utf-8")
    get_run_logger().info("promotion of %s: %s (%s)", candidate,
                          "promoted" if decision["promoted"] else "not promoted", decision["reason"])
    create_markdown_artifact(
        key="promotion-decision",
        markdown=f"## Promotion decision: {candidate}\n\n{why}\n\n" + "\n".join(
            f"- {g['status'].upper()} `{g['name']}`: {g['detail']}" for g in decision["gates"]),
        description=decision["reason"],
    )
    return decision


if __name__ == "__main__":
    run_stage(promote_flow, Paths)
