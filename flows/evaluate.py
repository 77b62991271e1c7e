"""Stage evaluate: score the fine-tuned model, alone and with the retrieved training examples in context, compare
it with every baseline, measure forgetting, report and recommend (tasks/evaluate/decision.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.stage import run_stage, start_stage_run
from tasks.core.approaches import FINETUNED, INIT_ADAPTER, WITH_RETRIEVAL
from tasks.core.errors import UserError
from tasks.core.params import Params
from tasks.data.tokenization import answerable, last_turn_only, tokenize_split, with_history
from tasks.evaluate.comparison import compare, forgetting_record, majority_label
from tasks.evaluate.inference import (
    attach_candidate,
    example_records,
    general_perplexity,
    general_text_set,
    held_out,
    score_adapter,
    score_model,
)
from tasks.evaluate.judge import judged
from tasks.evaluate.prompting import recipes, retrieve, scored_prompts, searched_texts
from tasks.evaluate.reporting import plot_chart, render_report, selection_note
from tasks.evaluate.score_files import ScoreFile
from tasks.formats.registry import CONVERSATION
from tasks.model.loading import load_model, padding_id, pick_device


@dataclass(frozen=True)
class Paths:
    base: Path  # the base model directory
    validated: Path  # eval.parquet: the held-out examples, train.parquet: what retrieval shows
    index: Path  # the retrieval index of the training examples (evaluate_baselines built it)
    adapter: Path  # the candidate: LoRA adapter or full model
    baselines: Path  # the baselines' per-example scores
    training: Path  # the training summary (training time is a cost)
    metrics: Path  # every approach's metrics with intervals (a DVC metrics file)
    scores: Path  # every approach's per-example scores, the fine-tuned model's included
    report: Path  # the specialization report (markdown)
    chart: Path  # each metric per approach with error bars (PNG)


@flow(name="evaluate", on_running=[start_stage_run])
def evaluate_flow(params: Params, paths: Paths) -> dict[str, Any]:
    """Score the candidate on the baselines' examples, then compare all approaches with paired intervals."""
    settings = params.evaluate
    baselines = ScoreFile.read(paths.baselines)
    model, tokenizer = load_model(paths.base, pick_device("auto"))
    scored, drawn = held_out(paths.validated, params)
    shape = params.data.shape
    evaluation = answerable(scored, tokenizer, shape, params.tokenize.system_prompt, params.tokenize.max_length)
    train = pd.read_parquet(paths.validated / "train.parquet")
    recipe = recipes(params, train)
    nearest = retrieve(paths.index, searched_texts(evaluation, shape), params.baselines.retrieval_k)
    dataset = scored_prompts(tokenizer, evaluation, train, recipe[FINETUNED], nearest, params)
    examples = example_records(dataset, tokenizer, shape, evaluation.get("messages"))
    if examples != baselines.examples:
        raise UserError(f"{paths.baselines} scored other examples than this stage; run `dvc repro`")
    pad_id = padding_id(tokenizer)
    general_set = general_text_set(tokenizer, settings.forgetting_text, settings.forgetting_max_chunks,
                                   params.tokenize.max_length)
    base_general = general_perplexity(model, general_set, pad_id, settings.batch_size)
    started = {}
    if params.finetune.init_adapter is not None:  # what this run's training added to the adapter it started from
        started[INIT_ADAPTER], model = score_adapter(model, params.finetune.init_adapter, tokenizer, dataset,
                                                     settings.batch_size, settings.max_new_tokens,
                                                     params.task() != "text")
    candidate = attach_candidate(model, paths.adapter)
    finetuned = score_model(candidate, tokenizer, dataset, settings.batch_size, settings.max_new_tokens,
                            params.task() != "text")
    with_retrieval = score_model(candidate, tokenizer,
                                 scored_prompts(tokenizer, evaluation, train, recipe[WITH_RETRIEVAL], nearest, params),
                                 settings.batch_size, settings.max_new_tokens, params.task() != "text")
    forgetting = forgetting_record(base_general, general_perplexity(candidate, general_set, pad_id,
                                                                    settings.batch_size))
    without_history = None
    if shape == CONVERSATION and with_history(evaluation):
        # The context ablation: the same conversations, only their last user turn.
        last_turns = tokenize_split(tokenizer, last_turn_only(evaluation), shape, params.tokenize.system_prompt,
                                    params.tokenize.max_length)
        without_history = score_model(candidate, tokenizer, last_turns, settings.batch_size, settings.max_new_tokens,
                                      True)
    scores = ScoreFile(params.task(), examples, {**baselines.approaches, FINETUNED: finetuned,
                                                 WITH_RETRIEVAL: with_retrieval, **started})
    training = json.loads(paths.training.read_text(encoding="utf-8"))
    majority = majority_label(params.task(), shape, paths.validated / "train.parquet")
    judgement = (None if settings.judge is None else
                 judged(scores, settings.judge, settings.bootstrap_samples, settings.confidence, params.seed))
    comparison = compare(scores, training["tokens_trained"], forgetting, params.promote,
                         settings.bootstrap_samples, settings.confidence, params.seed, without_history, majority,
                         judgement)
    result = {**comparison.record(), "selection": {"split": settings.split,
                                                    "configurations_compared": settings.configurations_compared}}
    paths.metrics.parent.mkdir(parents=True, exist_ok=True)
    paths.metrics.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    scores.write(paths.scores)
    report = render_report(comparison, settings.confidence, len(examples), drawn,
                           selection_note(settings.split, settings.configurations_compared))
    paths.report.write_text(report, encoding="utf-8")
    plot_chart(comparison.metrics, comparison.single, str(paths.chart))
    create_markdown_artifact(key="specialization-report", markdown=report, description=comparison.recommendation)
    return result


if __name__ == "__main__":
    run_stage(evaluate_flow, Paths)
