"""Stage portfolio: every approach on every specialization's held-out set, and which to serve for each task.

Each specialization's evaluate stage scored its own specialist and the baselines on its held-out set; this stage
adds, on every set, the other specialists, the multi-task model and the task's specialist with retrieval in
context, then compares them all with paired intervals (tasks/evaluate/portfolio.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset
from prefect import flow
from prefect.artifacts import create_markdown_artifact
from transformers import AutoTokenizer

from flows.stage import run_stage, start_stage_run
from tasks.core.approaches import BASELINES, FINETUNED, GENERALIST, MULTITASK, SPECIALIST, WITH_RETRIEVAL
from tasks.core.errors import UserError
from tasks.core.params import Params
from tasks.data.tokenization import answerable, tokenize_split
from tasks.evaluate.comparison import forgetting_record, majority_label
from tasks.evaluate.inference import (
    attach_candidate,
    example_records,
    general_perplexity,
    general_text_set,
    held_out,
    score_model,
)
from tasks.evaluate.portfolio import Column, column_record, plot_heatmap, portfolio_record, render_portfolio
from tasks.evaluate.score_files import ScoreFile, Scores
from tasks.model.loading import load_model, padding_id, pick_device


@dataclass(frozen=True)
class Paths:
    base: Path  # the base model directory
    validated: Path  # per specialization: train.parquet and eval.parquet
    adapters: Path  # per specialization: its specialist
    multitask_adapter: Path  # the multi-task model
    reports: Path  # per specialization: scores.json, training.json, promotion.json
    multitask_training: Path  # the multi-task model's training summary
    scores: Path  # every approach's per-example scores, per specialization
    matrix: Path  # the cross-evaluation and recommendations (a DVC metrics file)
    report: Path  # the same, for people (markdown)
    heatmap: Path  # approaches by specializations (PNG)


@dataclass
class HeldOut:
    """One specialization's held-out examples, tokenized as its evaluate stage did for its fine-tuned model."""

    params: Params
    plain: Dataset
    scores: ScoreFile  # its evaluate stage's: its specialist alone and with retrieval, and the baselines


def held_out_sets(params: Params, paths: Paths, tokenizer: Any) -> dict[str, HeldOut]:
    sets = {}
    for name in params.specializations:
        spec = params.specialized(name)
        shape, tokenize = spec.data.shape, spec.tokenize
        evaluation = answerable(held_out(paths.validated / name, spec)[0],
                                tokenizer, shape, tokenize.system_prompt, tokenize.max_length)
        plain = tokenize_split(tokenizer, evaluation, shape, tokenize.system_prompt, tokenize.max_length)
        scores = ScoreFile.read(paths.reports / name / "scores.json")
        if example_records(plain, tokenizer, shape, evaluation.get("messages")) != scores.examples:
            raise UserError(f"{paths.reports / name / 'scores.json'} scored other examples than this stage; run "
                            "`dvc repro`")
        sets[name] = HeldOut(spec, plain, scores)
    return sets


def cross_scores(sets: dict[str, HeldOut], adapters: dict[str, Path], base: Path, general: Dataset,
                 batch_size: int) -> tuple[dict[str, dict[str, Scores]], dict[str, float]]:
    """Each adapter on every held-out set but its own task's (scored there by evaluate, alone and with retrieval);
    one adapter loaded at a time, merged into a fresh base. And the perplexity of the base model and of each adapter
    on the same general text."""
    scored: dict[str, dict[str, Scores]] = {name: {} for name in sets}
    perplexity: dict[str, float] = {}
    for approach, adapter in adapters.items():
        model, tokenizer = load_model(base, pick_device("auto"))
        if not perplexity:  # the base model's, on the first load, before an adapter is merged into it
            perplexity[GENERALIST] = general_perplexity(model, general, padding_id(tokenizer), batch_size)
        candidate = attach_candidate(model, adapter)
        perplexity[approach] = general_perplexity(candidate, general, padding_id(tokenizer), batch_size)
        for name, held in sets.items():
            if approach == SPECIALIST + name:
                continue
            evaluate = held.params.evaluate
            scored[name][approach] = score_model(candidate, tokenizer, held.plain, evaluate.batch_size,
                                                 evaluate.max_new_tokens, held.params.task() != "text")
        del candidate, model
    return scored, perplexity


def forgetting_records(perplexity: dict[str, float]) -> dict[str, dict[str, float]]:
    """Each fine-tuned model's perplexity on the general text against the base model's (the generalist)."""
    return {a: forgetting_record(perplexity[GENERALIST], p) for a, p in perplexity.items() if a != GENERALIST}


def tokens_trained(summary: Path) -> int:
    return int(json.loads(summary.read_text(encoding="utf-8"))["tokens_trained"])


@flow(name="portfolio", on_running=[start_stage_run])
def portfolio_flow(params: Params, paths: Paths) -> dict[str, Any]:
    if not params.specializations:
        raise UserError("params.yaml has no specializations; add them under `specializations:` (see README)")
    names = list(params.specializations)
    tokenizer = AutoTokenizer.from_pretrained(paths.base)
    sets = held_out_sets(params, paths, tokenizer)
    adapters = {**{SPECIALIST + name: paths.adapters / name for name in names}, MULTITASK: paths.multitask_adapter}
    # Forgetting on one ground for every model: the top-level forgetting text, chunked at the top-level max_length.
    general = general_text_set(tokenizer, params.evaluate.forgetting_text, params.evaluate.forgetting_max_chunks,
                               params.tokenize.max_length)
    cross, perplexity = cross_scores(sets, adapters, paths.base, general, params.evaluate.batch_size)
    trained = {**{SPECIALIST + name: tokens_trained(paths.reports / name / "training.json") for name in names},
               MULTITASK: tokens_trained(paths.multitask_training)}
    columns, score_files = {}, {}
    for name, held in sets.items():
        own = held.scores.approaches
        approaches = {**{a: (own[FINETUNED] if a == SPECIALIST + name else cross[name][a]) for a in adapters},
                      WITH_RETRIEVAL: own[WITH_RETRIEVAL], **{a: own[a] for a in BASELINES}}
        score_files[name] = ScoreFile(held.scores.task, held.scores.examples, approaches)
        spec = held.params
        majority = majority_label(spec.task(), spec.data.shape, paths.validated / name / "train.parquet")
        column = Column(name, spec.promote.metric, score_files[name], majority)
        columns[name] = column_record(column, {**trained, WITH_RETRIEVAL: trained[SPECIALIST + name]},
                                      spec.promote.min_relative_improvement, spec.evaluate.bootstrap_samples,
                                      spec.evaluate.confidence, params.seed)
    promotions = {name: json.loads((paths.reports / name / "promotion.json").read_text(encoding="utf-8"))
                  for name in names}
    record = portfolio_record(columns, promotions, forgetting_records(perplexity), params.promote.max_forgetting)
    paths.scores.parent.mkdir(parents=True, exist_ok=True)
    paths.scores.write_text(json.dumps({n: f.as_dict() for n, f in score_files.items()}, ensure_ascii=False) + "\n",
                            encoding="utf-8")
    paths.matrix.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    report = render_portfolio(record, params.evaluate.confidence)
    paths.report.write_text(report, encoding="utf-8")
    plot_heatmap(record, str(paths.heatmap))
    create_markdown_artifact(key="portfolio-report", markdown=report,
                             description=record["recommendation"]["portfolio"])
    return record


if __name__ == "__main__":
    run_stage(portfolio_flow, Paths)
