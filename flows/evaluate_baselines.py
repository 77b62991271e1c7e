"""Stage evaluate_baselines: the specializations that need no training, on the held-out examples.

generalist: the base model zero-shot with its chat template (what the fine-tuned model is asked too);
prompted: a system prompt and k fixed few-shot examples; retrieval: the k most similar training examples.
Depends only on the base model, the validated data and these params, so training changes never re-run it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pandas as pd
from prefect import flow

from flows.stage import log_run_labels, run_stage
from tasks.evaluation import score_model
from tasks.models import load_model, pick_device
from tasks.params import BaselinesParams, EvaluateParams, Params, TokenizeParams
from tasks.prompting import build_index, few_shot_examples, retrieve
from tasks.tokenization import tokenize_split

BASE_DIR = Path("models/base")
DATA_DIR = Path("data/validated")
INDEX_DIR = Path("data/retrieval_index")
SCORES = Path("reports/baselines.json")
NO_TRUNCATION = 1 << 20  # few-shot prompts are scored whole; truncating them would cut the answer


def held_out(evaluate: EvaluateParams) -> pd.DataFrame:
    """The examples every approach is scored on: the first max_examples of the eval split."""
    return pd.read_parquet(DATA_DIR / "eval.parquet").head(evaluate.max_examples)


@flow(name="evaluate_baselines", on_running=[log_run_labels])
def evaluate_baselines_flow(baselines: BaselinesParams, evaluate: EvaluateParams, tokenize: TokenizeParams,
                            data_format: str) -> dict[str, dict[str, float]]:
    model, tokenizer = load_model(BASE_DIR, pick_device("auto"))
    train, evaluation = pd.read_parquet(DATA_DIR / "train.parquet"), held_out(evaluate)
    instruction = data_format == "instruction"
    contexts: dict[str, tuple[str | None, list | None]] = {"generalist": (tokenize.system_prompt, None)}
    if instruction:
        shots = few_shot_examples(train, baselines.few_shot_k, baselines.few_shot_seed)
        build_index(list(train["prompt"]), baselines.retriever, INDEX_DIR)
        nearest = retrieve(INDEX_DIR, list(evaluation["prompt"]), baselines.retrieval_k)
        contexts["prompted"] = (baselines.system_prompt, [shots] * len(evaluation))
        contexts["retrieval"] = (baselines.system_prompt, [[(train["prompt"].iloc[j], train["response"].iloc[j])
                                                            for j in row] for row in nearest])
    else:
        INDEX_DIR.mkdir(parents=True, exist_ok=True)  # plain text has no questions to retrieve for
    scores = {}
    for approach, (system_prompt, examples) in contexts.items():
        # The generalist sees exactly the fine-tuned model's inputs: same template, same truncation.
        max_length = tokenize.max_length if approach == "generalist" else NO_TRUNCATION
        dataset = tokenize_split(tokenizer, evaluation, data_format, system_prompt, max_length, examples)
        scores[approach] = score_model(model, tokenizer, dataset, evaluate.batch_size, evaluate.max_new_tokens,
                                       instruction)
    SCORES.parent.mkdir(parents=True, exist_ok=True)
    SCORES.write_text(json.dumps({
        "examples": evaluation.to_dict("records"),
        "approaches": {a: asdict(s) for a, s in scores.items()},
    }, ensure_ascii=False) + "\n", encoding="utf-8")
    return {a: s.cost() for a, s in scores.items()}


def main(params: Params) -> None:
    evaluate_baselines_flow(params.baselines, params.evaluate, params.tokenize, params.data.format)


if __name__ == "__main__":
    run_stage(main)
