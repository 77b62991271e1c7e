"""Stage evaluate: score the fine-tuned model, compare it with every baseline, measure forgetting, report."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from datasets import load_from_disk
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.stage import log_run_labels, run_stage
from tasks.errors import UserError
from tasks.evaluation import Scores, TaskMetrics, attach_candidate, padding_id, reference_nll, score_model
from tasks.models import load_model, pick_device
from tasks.params import Params
from tasks.reporting import best, improvement, plot_chart, recommendation, render_report
from tasks.statistics import paired_bootstrap
from tasks.tokenization import tokenize_split
from tasks.validation import read_table

BASE_DIR = Path("models/base")
EVAL_DIR = Path("data/tokenized/eval")
CANDIDATE_DIR = Path("models/adapter")
BASELINES = Path("reports/baselines.json")
TRAINING = Path("reports/training.json")
METRICS = Path("reports/metrics.json")
SCORES = Path("reports/scores.json")
REPORT = Path("reports/specialization.md")
CHART = Path("reports/specialization.png")


def general_perplexity(model: Any, dataset: Any, pad_id: int, batch_size: int) -> float:
    """Token-weighted perplexity on the general-domain text."""
    nll, tokens = reference_nll(model, dataset, batch_size, pad_id)
    return math.exp(sum(nll) / max(sum(tokens), 1))


def regressions(metric_values: TaskMetrics, metric: str, baseline: str, examples: list[dict[str, str]],
                limit: int = 5) -> list[dict[str, Any]]:
    """Examples where the fine-tuned model trails the best baseline the most, per-example `metric`."""
    ours = metric_values.per_example_score("finetuned", metric)
    theirs = metric_values.per_example_score(baseline, metric)
    if ours is None or theirs is None:
        return []
    worst = sorted(range(len(ours)), key=lambda i: ours[i] - theirs[i])[:limit]
    return [{"prompt": examples[i].get("prompt", examples[i].get("text", "")[:80]),
             "reference": examples[i].get("response", ""),
             "finetuned": output(metric_values.scores["finetuned"], i), "finetuned_score": float(ours[i]),
             "baseline": baseline, "baseline_output": output(metric_values.scores[baseline], i),
             "baseline_score": float(theirs[i])} for i in worst if ours[i] < theirs[i]]


def output(scores: Scores, index: int) -> str:
    return scores.predictions[index] if scores.predictions else "(not generated: plain-text data)"


def flat_interval(metric: str, interval: dict[str, float]) -> dict[str, float]:
    """rouge_l, rouge_l_ci_low, rouge_l_ci_high: flat numbers that `dvc metrics diff` compares."""
    return {metric: interval["value"], f"{metric}_ci_low": interval["ci_low"], f"{metric}_ci_high": interval["ci_high"]}


@flow(name="evaluate", on_running=[log_run_labels])
def evaluate_flow(params: Params) -> dict[str, Any]:
    """Score the candidate on the baselines' examples, then compare all approaches with paired intervals."""
    settings = params.evaluate
    recorded = json.loads(BASELINES.read_text(encoding="utf-8"))
    baselines = {a: Scores(**s) for a, s in recorded["approaches"].items()}
    examples = recorded["examples"]
    dataset = load_from_disk(str(EVAL_DIR))
    dataset = dataset.select(range(min(settings.max_examples, len(dataset))))
    if params.data.format == "instruction" and list(dataset["prompt"]) != [e["prompt"] for e in examples]:
        raise UserError("evaluate_baselines scored other examples than the tokenized eval split; run `dvc repro`")
    instruction = params.data.format == "instruction"
    model, tokenizer = load_model(BASE_DIR, pick_device("auto"))
    pad_id = padding_id(tokenizer)
    general = read_table(settings.forgetting_text).head(settings.forgetting_max_chunks)
    general_set = tokenize_split(tokenizer, general, "text", None, params.tokenize.max_length)
    general_set = general_set.select(range(min(settings.forgetting_max_chunks, len(general_set))))
    base_general = general_perplexity(model, general_set, pad_id, settings.batch_size)
    candidate = attach_candidate(model, CANDIDATE_DIR)
    finetuned = score_model(candidate, tokenizer, dataset, settings.batch_size, settings.max_new_tokens, instruction)
    tuned_general = general_perplexity(candidate, general_set, pad_id, settings.batch_size)

    scores = {**baselines, "finetuned": finetuned}
    task = "text" if not instruction else settings.task
    references = [e.get("response", "") for e in examples]
    values = TaskMetrics(task, scores, references)
    single, paired = paired_bootstrap(list(scores), values.functions(), len(examples), settings.bootstrap_samples,
                                      settings.confidence, params.seed)
    training = json.loads(TRAINING.read_text(encoding="utf-8"))
    costs = {a: s.cost() for a, s in scores.items()}
    costs["finetuned"]["training_seconds"] = training["train_seconds"]
    forgetting = {"base_perplexity": round(base_general, 4), "finetuned_perplexity": round(tuned_general, 4),
                  "relative_increase": round(tuned_general / base_general - 1, 5)}
    metric = params.promote.metric
    best_baseline = best(list(baselines), metric, single)
    comparisons = {b: {m: improvement(m, paired["finetuned", b][m]) for m in values.names} for b in baselines}
    headline = recommendation(metric, single, paired, costs, settings.confidence)

    result: dict[str, Any] = {
        a: {**{k: v for m in values.names for k, v in flat_interval(m, single[a][m].as_dict()).items()}, **costs[a]}
        for a in scores
    }
    result["forgetting"] = forgetting
    result["comparisons"] = {f"finetuned_vs_{b}": {m: {**g.as_dict(), "better": g.low > 0} for m, g in c.items()}
                             for b, c in comparisons.items()}
    result["best_baseline"] = best_baseline
    result["recommendation"] = headline
    METRICS.parent.mkdir(parents=True, exist_ok=True)
    METRICS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    SCORES.write_text(json.dumps({"task": task, "examples": examples,
                                  "approaches": {a: asdict(s) for a, s in scores.items()}}, ensure_ascii=False) + "\n",
                      encoding="utf-8")
    report = render_report(values.names, single, comparisons, costs, forgetting,
                           regressions(values, metric, best_baseline, examples), headline, settings.confidence,
                           len(examples))
    REPORT.write_text(report, encoding="utf-8")
    plot_chart(values.names, single, str(CHART))
    create_markdown_artifact(key="specialization-report", markdown=report, description=headline)
    return result


if __name__ == "__main__":
    run_stage(evaluate_flow)
