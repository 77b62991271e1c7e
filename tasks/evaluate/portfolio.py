"""The portfolio's cross-evaluation: every approach on every specialization's held-out set, each cell the task's
promotion metric with its paired-bootstrap interval; per task the best approach, by how much and at what cost;
one multi-task model against N specialists; each specialist's cross-task forgetting; and the recommendations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tasks.core.approaches import BASELINES, GENERALIST, MULTITASK, SPECIALIST, WITH_RETRIEVAL
from tasks.core.metrics import lower_is_better  # noqa: E402
from tasks.evaluate.comparison import MAJORITY, constant_answer  # noqa: E402
from tasks.evaluate.decision import decide  # noqa: E402
from tasks.evaluate.score_files import ScoreFile  # noqa: E402
from tasks.evaluate.scoring import LIKELIHOOD, TaskMetrics  # noqa: E402
from tasks.evaluate.statistics import Interval, paired_bootstrap  # noqa: E402


@dataclass(frozen=True)
class Column:
    """One specialization's held-out set: its task, its promotion metric, and every approach's scores on it."""

    name: str
    metric: str
    scores: ScoreFile
    majority_label: str | None  # label tasks: the most frequent training label


def adapters(approach: str) -> int:
    """Adapters to serve for the approach on one task (the multi-task one serves every task with one)."""
    return int(approach in (MULTITASK, WITH_RETRIEVAL) or approach.startswith(SPECIALIST))


def gain_record(gain: Interval) -> dict[str, Any]:
    return {**gain.as_dict(), "better": gain.better, "worse": gain.high < 0}


def column_record(column: Column, training_tokens: dict[str, int], min_relative_improvement: float,
                  samples: int, confidence: float, seed: int) -> dict[str, Any]:
    """Every approach's metric on this column with intervals, the best and the recommended approach, the costs
    (`training_tokens`: the tokens each trained approach trained on), the multi-task model against this task's
    specialist, and whether it is the recommendation among the baselines and itself (promote_multitask's gate), the
    other specialists against the generalist (their cross-task forgetting), and the majority-class check for label
    tasks."""
    metric, own = column.metric, SPECIALIST + column.name
    approaches = dict(column.scores.approaches)
    count = len(column.scores.examples)
    if column.majority_label is not None and metric not in LIKELIHOOD:
        approaches[MAJORITY] = constant_answer(column.majority_label, count)
    values = TaskMetrics(column.scores.task, approaches, column.scores.examples, only=metric)
    single, paired = paired_bootstrap(list(approaches), values.functions(), count, samples, confidence, seed)

    def gain(a: str, b: str) -> Interval:
        return paired[a, b][metric].as_gain(lower_is_better(metric))

    contenders = [a for a in approaches if a != MAJORITY]
    decision = decide(metric, single, paired, min_relative_improvement, contenders)
    recommended = decision.recommended
    # The gate promote_multitask applies: the multi-task model is the recommendation among the baselines and itself.
    over_baselines = decide(metric, single, paired, min_relative_improvement, [*BASELINES, MULTITASK])
    record: dict[str, Any] = {
        "metric": metric, "examples": count,
        "scores": {a: single[a][metric].as_dict() for a in approaches},
        "best": decision.best, "runner_up": decision.runner_up, "margin": gain_record(decision.margin),
        "tied_with_best": decision.tied, "recommended": recommended,
        "costs": {a: {"adapters": adapters(a), "training_tokens": training_tokens.get(a, 0),
                      **approaches[a].cost()} for a in contenders},
        "multitask_vs_specialist": gain_record(gain(MULTITASK, own)),
        "multitask_over_baselines": {"recommended": over_baselines.recommended, "tied": over_baselines.tied,
                                     "passes": over_baselines.recommended == MULTITASK},
        "forgetting": {a: gain_record(gain(a, GENERALIST)) for a in contenders
                       if a.startswith(SPECIALIST) and a != own},
    }
    if MAJORITY in approaches:
        record[MAJORITY] = {"label": column.majority_label, "recommended_vs_majority":
                            gain_record(gain(recommended, MAJORITY))}
    return record


def portfolio_record(columns: dict[str, dict[str, Any]], promotions: dict[str, dict[str, Any]],
                     forgetting: dict[str, dict[str, float]], max_forgetting: float) -> dict[str, Any]:
    """reports/portfolio.json: per task its column record and promotion decision; each fine-tuned model's
    forgetting of general text against the promotion gate's limit; then the portfolio's recommendation: what to
    serve for each task, and whether one multi-task model would do for all."""
    multitask_everywhere = all(MULTITASK in c["tied_with_best"] for c in columns.values())
    multitask_forgets = not forgetting[MULTITASK]["relative_increase"] <= max_forgetting
    promotable = [name for name, c in columns.items()
                  if c["multitask_over_baselines"]["passes"] and not multitask_forgets]
    chosen = {name: c["recommended"] for name, c in columns.items()}
    served = {SPECIALIST + name if a in (WITH_RETRIEVAL, SPECIALIST + name) else a
              for name, a in chosen.items() if adapters(a)}
    if multitask_everywhere:
        verdict = (f"serve the multi-task model for all {len(columns)} tasks: 1 adapter, tied with the best "
                   f"approach on every task")
    else:
        verdict = (f"serve per task as recommended ({len(served)} adapter{'s' * (len(served) != 1)}); the "
                   f"multi-task model trails the best approach on "
                   + ", ".join(n for n, c in columns.items() if MULTITASK not in c["tied_with_best"]))
    return {"tasks": {name: {**c, "promotion": promotions[name]} for name, c in columns.items()},
            "forgetting": {a: {**f, "within_limit": f["relative_increase"] <= max_forgetting}
                           for a, f in forgetting.items()},
            "max_forgetting": max_forgetting,
            "recommendation": {"per_task": chosen, "portfolio": verdict, "multitask_everywhere": multitask_everywhere,
                               "adapters_to_serve": len(served), "multitask_passes_gates_for": promotable}}


def interval_text(value: dict[str, Any], signed: bool = False) -> str:
    form = "{:+.3g}" if signed else "{:.3g}"
    return f"{form.format(value['value'])} [{form.format(value['ci_low'])}, {form.format(value['ci_high'])}]"


def verdict_text(gain: dict[str, Any]) -> str:
    return "better" if gain["better"] else "worse" if gain["worse"] else "no significant difference"


def render_portfolio(record: dict[str, Any], confidence: float) -> str:
    """reports/portfolio.md: the matrix, then per task the winner and its cost, the multi-task model against the
    specialists, cross-task forgetting, promotion, and the recommendations."""
    tasks = record["tasks"]
    approaches = list(dict.fromkeys(a for c in tasks.values() for a in c["scores"]))
    lines = ["# The portfolio: every approach on every specialization", "",
             f"Each cell: the task's promotion metric on its held-out set, with its {confidence:.0%} paired "
             "bootstrap interval; bold: the best on that task. `specialist:x` is the model fine-tuned on x; "
             f"`{MULTITASK}` one model fine-tuned on all of them; `{WITH_RETRIEVAL}` the task's specialist with "
             "its retrieved training examples in context.", "",
             "| approach | " + " | ".join(f"{n} ({c['metric']}, {c['examples']} ex.)" for n, c in tasks.items()) + " |",
             "|" + "---|" * (1 + len(tasks))]
    for a in approaches:
        cells = [("**{}**" if c["best"] == a else "{}").format(interval_text(c["scores"][a])) if a in c["scores"]
                 else "–" for c in tasks.values()]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    lines += ["", "## Per task: the best approach, by how much, at what cost", ""]
    for name, c in tasks.items():
        costs = c["costs"][c["recommended"]]
        margin = c["margin"]
        lines.append(f"- **{name}**: best {c['best']} ({c['metric']} {c['scores'][c['best']]['value']:.3g}), ahead of "
                     f"{c['runner_up']} by {interval_text(margin, True)} "
                     f"({'significant' if margin['better'] else 'not significant'}); tied with the best: "
                     f"{', '.join(c['tied_with_best'])}. Recommended: **{c['recommended']}**, the cheapest of those "
                     f"to serve ({costs['adapters']} adapter{'s' * (costs['adapters'] != 1)}, "
                     f"{costs['training_tokens']:,} tokens of training, {costs['prompt_tokens_per_example']:g} prompt "
                     "tokens per answer).")
        if MAJORITY in c:
            check = c[MAJORITY]["recommended_vs_majority"]
            lines.append(f"  Against always answering \"{c[MAJORITY]['label']}\": {interval_text(check, True)}, "
                         + ("better." if check["better"] else "**not better than the majority class**."))
    lines += ["", "## One multi-task model or N specialists?", "",
              "The multi-task model's metric minus each task's own specialist's (positive: the multi-task model is "
              "better), and the approach the decision recommends among the baselines and the multi-task model (the "
              "multi-task model's promotion requires itself).", "",
              "| task | multi-task | specialist | difference | verdict | recommended over the baselines |",
              "|---|---|---|---|---|---|"]
    for name, c in tasks.items():
        gain, over = c["multitask_vs_specialist"], c["multitask_over_baselines"]
        lines.append(f"| {name} | {interval_text(c['scores'][MULTITASK])} | "
                     f"{interval_text(c['scores'][SPECIALIST + name])} | {interval_text(gain, True)} | "
                     f"{verdict_text(gain)} | {over['recommended']} (tied with the best: {', '.join(over['tied'])}) |")
    lines += ["", "## Cross-task forgetting", "",
              "Each specialist on the other tasks, minus the generalist (the base model) there: negative means "
              "fine-tuning on its own task cost the others.", "", "| specialist | on task | difference | verdict |",
              "|---|---|---|---|"]
    for name, c in tasks.items():
        for a, gain in c["forgetting"].items():
            lines.append(f"| {a.removeprefix(SPECIALIST)} | {name} | {interval_text(gain, True)} | "
                         f"{verdict_text(gain)} |")
    lines += ["", "## Forgetting of general text", "",
              f"Perplexity on the general-domain text (the same chunks for every model), base model "
              f"{next(iter(record['forgetting'].values()))['base_perplexity']:.4g}; the promotion gate allows a "
              f"rise of {record['max_forgetting']:.0%}.", "",
              "| model | perplexity | change | within the gate |", "|---|---|---|---|"]
    lines += [f"| {a} | {f['finetuned_perplexity']:.4g} | {f['relative_increase']:+.1%} | "
              f"{'yes' if f['within_limit'] else '**no**'} |" for a, f in record["forgetting"].items()]
    lines += ["", "## Promotion per specialization", ""]
    lines += [f"- {name}: {'promoted' if c['promotion']['promoted'] else 'not promoted'} "
              f"({c['promotion']['reason']})" for name, c in tasks.items()]
    recommendation = record["recommendation"]
    lines += ["", "## Recommendation", ""]
    lines += [f"- {name}: **{approach}**" for name, approach in recommendation["per_task"].items()]
    promotable = recommendation["multitask_passes_gates_for"]
    lines += ["", f"Portfolio: {recommendation['portfolio']}.",
              "", f"The multi-task model passes the promotion gates (recommended over the baselines, forgetting) for: "
              f"{', '.join(promotable) if promotable else 'no task'}.", ""]
    return "\n".join(lines)


def plot_heatmap(record: dict[str, Any], path: str) -> None:
    """Approaches by tasks; each column coloured from its worst (0) to its best (1) approach, as metrics differ by
    task; each cell printed with its value."""
    tasks = record["tasks"]
    approaches = list(dict.fromkeys(a for c in tasks.values() for a in c["scores"]))
    values = np.full((len(approaches), len(tasks)), np.nan)
    shade = np.full_like(values, np.nan)
    for column, c in enumerate(tasks.values()):
        for row, a in enumerate(approaches):
            if a in c["scores"]:
                values[row, column] = c["scores"][a]["value"]
        present = values[:, column][~np.isnan(values[:, column])]
        spread = float(present.max() - present.min()) or 1.0
        shade[:, column] = (values[:, column] - present.min()) / spread
        if lower_is_better(c["metric"]):
            shade[:, column] = 1 - shade[:, column]
    figure, axis = plt.subplots(figsize=(2.2 + 1.9 * len(tasks), 1.2 + 0.45 * len(approaches)))
    axis.imshow(shade, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    axis.set_xticks(range(len(tasks)), [f"{n}\n({c['metric']})" for n, c in tasks.items()])
    axis.set_yticks(range(len(approaches)), approaches)
    for (row, column), value in np.ndenumerate(values):
        if not np.isnan(value):
            axis.text(column, row, f"{value:.3g}", ha="center", va="center", fontsize=9)
    axis.set_title("Every approach on every specialization")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
