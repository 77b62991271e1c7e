"""Stage evaluate_baselines: the specializations that need no training, on the held-out examples.

generalist: the base model zero-shot with its chat template (what the fine-tuned model is asked too);
prompted: a system prompt and k fixed few-shot examples; retrieval: the k most similar training examples.
For plain text, prompted and retrieval put k fixed or k most similar training passages before each scored one;
for conversations, k fixed or k most similar training conversations go before the held-out one's turns.
Depends only on the base model, the validated data and these params, so training changes never re-run it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from prefect import flow

from flows.stage import run_stage, start_stage_run
from tasks.core.approaches import BASELINES
from tasks.core.params import Params
from tasks.data.tokenization import answerable
from tasks.evaluate.inference import example_records, held_out, score_model
from tasks.evaluate.prompting import build_index, recipes, retrieve, scored_prompts, searched_texts
from tasks.evaluate.score_files import ScoreFile
from tasks.model.loading import load_model, pick_device


@dataclass(frozen=True)
class Paths:
    base: Path  # the base model directory
    validated: Path  # train.parquet (examples to show) and eval.parquet (the held-out examples)
    index: Path  # the retrieval index of the training examples
    scores: Path  # every baseline's per-example scores


@flow(name="evaluate_baselines", on_running=[start_stage_run])
def evaluate_baselines_flow(params: Params, paths: Paths) -> dict[str, dict[str, float]]:
    baselines, tokenize, evaluate, shape = params.baselines, params.tokenize, params.evaluate, params.data.shape
    model, tokenizer = load_model(paths.base, pick_device("auto"))
    train = pd.read_parquet(paths.validated / "train.parquet")
    evaluation = answerable(held_out(paths.validated, params)[0], tokenizer,
                            shape, tokenize.system_prompt, tokenize.max_length)
    build_index(searched_texts(train, shape), baselines.retriever, paths.index)
    nearest = retrieve(paths.index, searched_texts(evaluation, shape), baselines.retrieval_k)
    recipe = recipes(params, train)
    scores, examples = {}, []
    for approach in BASELINES:
        # The generalist sees exactly the fine-tuned model's inputs: same template, same truncation.
        dataset = scored_prompts(tokenizer, evaluation, train, recipe[approach], nearest, params)
        examples = examples or example_records(dataset, tokenizer, shape, evaluation.get("messages"))
        scores[approach] = score_model(model, tokenizer, dataset, evaluate.batch_size, evaluate.max_new_tokens,
                                       params.task() != "text")
    ScoreFile(params.task(), examples, scores).write(paths.scores)
    return {a: s.cost() for a, s in scores.items()}


def main(params: Params, paths: Paths) -> None:
    evaluate_baselines_flow(params, paths)


if __name__ == "__main__":
    run_stage(main, Paths)
