"""Stage evaluate: score the base model and the fine-tuned candidate on the held-out split."""

from __future__ import annotations

import json
from pathlib import Path

from datasets import load_from_disk
from prefect import flow

from flows.stage import run_stage
from tasks.evaluation import attach_candidate, score_model
from tasks.models import load_model, pick_device
from tasks.params import EvaluateParams

BASE_DIR = Path("models/base")
EVAL_DIR = Path("data/tokenized/eval")
CANDIDATE_DIR = Path("models/adapter")
METRICS = Path("reports/metrics.json")
PREDICTIONS = Path("reports/predictions.jsonl")


@flow(name="evaluate")
def evaluate_flow(evaluate: EvaluateParams, data_format: str) -> dict[str, dict[str, float]]:
    """Same examples, same metrics, base then candidate; write metrics JSON and per-example predictions."""
    model, tokenizer = load_model(BASE_DIR, pick_device("auto"))
    dataset = load_from_disk(str(EVAL_DIR))
    dataset = dataset.select(range(min(evaluate.max_examples, len(dataset))))
    generate = data_format == "instruction"
    base = score_model(model, tokenizer, dataset, evaluate.batch_size, evaluate.max_new_tokens, generate)
    candidate = attach_candidate(model, CANDIDATE_DIR)
    finetuned = score_model(candidate, tokenizer, dataset, evaluate.batch_size, evaluate.max_new_tokens, generate)
    metrics = {"base": base.summary(), "finetuned": finetuned.summary()}
    METRICS.parent.mkdir(parents=True, exist_ok=True)
    METRICS.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    with PREDICTIONS.open("w", encoding="utf-8") as handle:
        for i, row in enumerate(dataset.select_columns(["prompt", "response"])):
            record = {**row, "base": base.predictions[i] if generate else None,
                      "finetuned": finetuned.predictions[i] if generate else None,
                      "base_rouge_l": base.rouge_l[i] if generate else None,
                      "finetuned_rouge_l": finetuned.rouge_l[i] if generate else None}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return metrics


if __name__ == "__main__":
    run_stage(lambda params: evaluate_flow(params.evaluate, params.data.format))
