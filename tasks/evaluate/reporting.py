"""The specialization report: which approach wins for this data, by how much, at what cost."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402

from tasks.core.approaches import FINETUNED, INIT_ADAPTER
from tasks.core.metrics import lower_is_better  # noqa: E402
from tasks.evaluate.comparison import Comparison  # noqa: E402
from tasks.evaluate.statistics import Interval  # noqa: E402


def verdict(gain: Interval) -> str:
    """'better' or 'worse' only when the interval of the difference excludes zero."""
    if gain.better:
        return "better"
    if gain.high < 0:
        return "worse"
    return "no significant difference"


def selection_note(split: str, compared: int) -> str:
    """What the held-out figures may claim: a dev score only ranks configurations; a test score certifies one
    only as far as it was not chosen among many on the same rows (the winner's curse), so their count is said."""
    if split == "dev":
        return ("Scored on the dev split, to choose between configurations: these figures rank them and certify "
                "nothing; the test split scores the chosen one once (evaluate.split: test).")
    if compared == 1:
        return "Scored on the test split; no configurations were compared on dev before this one."
    return (f"Scored on the test split, once: {compared} configurations compared on dev before this one was chosen "
            "(evaluate.configurations_compared).")


def render_report(comparison: Comparison, confidence: float, examples: int, drawn: str,
                  selection: str) -> str:
    """reports/specialization.md: the table of every approach, the fine-tuned model against each baseline,
    forgetting, the largest regressions, and the recommendation."""
    metrics, single, costs = comparison.metrics, comparison.single, comparison.costs
    cost_names = sorted({k for c in costs.values() for k in c})
    header = "| approach | " + " | ".join(metrics) + " | " + " | ".join(n.replace("_", " ") for n in cost_names) + " |"
    lines = [
        "# Which specialization is best for this data?", "",
        f"{examples} held-out examples ({drawn}), the same for every approach; {confidence:.0%} paired bootstrap "
        f"intervals. {selection}",
        "", header, "|" + "---|" * (1 + len(metrics) + len(cost_names)),
    ]
    for a in single:
        cells = [f"{single[a][m].value:.4g} [{single[a][m].low:.4g}, {single[a][m].high:.4g}]" for m in metrics]
        cells += [f"{costs[a][n]:g}" if n in costs[a] else "–" for n in cost_names]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    lines += ["", "## Fine-tuned against each baseline" + (" and the adapter it started from" if INIT_ADAPTER in
                                                            comparison.gains else ""), "",
              "Improvement (positive = fine-tuned is better) with its interval; \"better\" only when it excludes zero.",
              "", "| baseline | " + " | ".join(metrics) + " |", "|" + "---|" * (1 + len(metrics))]
    for baseline, by_metric in comparison.gains.items():
        cells = [f"{g.value:+.4g} [{g.low:+.4g}, {g.high:+.4g}] {verdict(g)}" for g in by_metric.values()]
        lines.append(f"| {baseline} | " + " | ".join(cells) + " |")
    forgetting = comparison.forgetting
    lines += ["", "## Forgetting", "",
              f"Perplexity on the general-domain text: base {forgetting['base_perplexity']:.4g}, fine-tuned "
              f"{forgetting['finetuned_perplexity']:.4g} (relative increase {forgetting['relative_increase']:+.2%}).",
              "", "## Largest regressions of the fine-tuned model against the best baseline", ""]
    for r in comparison.regressions:
        if r[FINETUNED] is None:  # plain text: the score is the mean log-likelihood per token of the passage
            lines += [f"- **{r['example']}…** mean log-likelihood per token: fine-tuned {r['finetuned_score']:.3f}, "
                      f"{r['baseline']} {r['baseline_score']:.3f}"]
            continue
        lines += [f"- **{r['example']}** (reference: {r['reference']})",
                  f"  - fine-tuned ({r['finetuned_score']:.3f}): {r[FINETUNED]}",
                  f"  - {r['baseline']} ({r['baseline_score']:.3f}): {r['baseline_output']}"]
    if not comparison.regressions:
        lines.append("None found: the fine-tuned model is not worse than the best baseline on any example "
                     "(or the promotion metric has no per-example score, as for BLEU and macro-F1).")
    if comparison.context_ablation is not None:
        ablation = comparison.context_ablation
        metric, gain = ablation["metric"], ablation["history_gain"]
        lines += ["", "## Does the specialist use the conversation?", "",
                  f"The fine-tuned model on the same conversations with only their last user turn: {metric} "
                  f"{ablation['without_history']['value']:.4g} without the history, "
                  f"{ablation['with_history']['value']:.4g} with it (difference {gain['value']:+.4g}, "
                  f"{confidence:.0%} CI [{gain['ci_low']:+.4g}, {gain['ci_high']:+.4g}]): "
                  + ("it uses the history." if gain["better"] else "no evidence that it uses the history.")]
    if comparison.majority is not None:
        lines += majority_section(comparison.majority, confidence)
    if comparison.tool_confusions is not None:
        lines += ["", "## Called tool vs expected tool", ""]
        for approach, table in comparison.tool_confusions.items():
            lines += confusion_table(f"{approach} (rows: the reference's call; columns: the answer's)", table)
    if comparison.judge is not None:
        lines += judge_section(comparison.judge, confidence)
    lines += ["", comparison.recommendation, ""]
    return "\n".join(lines)


def judge_section(judged: dict[str, Any], confidence: float) -> list[str]:
    """evaluate.judge: the fine-tuned model's win rate against each approach, judged in both orders."""
    judge = judged["judge"]
    lines = ["", "## A judge's view", "",
             f"{judge['model']} ({judge['url']}) compared each approach's answer with the fine-tuned model's, in both "
             "orders (1: fine-tuned wins both, 0: loses both, 0.5: a tie or a split verdict); the fine-tuned "
             f"model's win rate with its {confidence:.0%} interval (0.5: no difference). Position flips: pairs the "
             "judge decided by their order alone.", "",
             "| against | fine-tuned win rate | position flips |", "|---|---|---|"]
    for other, rate in judged["finetuned_win_rate"].items():
        lines.append(f"| {other} | {rate['value']:.3g} [{rate['ci_low']:.3g}, {rate['ci_high']:.3g}] | "
                     f"{rate['position_flips']} |")
    return lines


def majority_section(majority: dict[str, Any], confidence: float) -> list[str]:
    """Label tasks: each approach against always answering the most frequent training label, then its
    confusions, so that a model which learned only the label counts is named as such."""
    label, scores = majority["label"], majority["scores"]
    shown = ", ".join(f"{name} {value['value']:.4g}" for name, value in scores.items())
    lines = ["", "## Against always answering the most frequent label", "",
             f"Always answering \"{label}\" (the most frequent training label) scores {shown}.", ""]
    for approach, gains in majority["gains"].items():
        cells = [f"{name} {g['value']:+.4g} [{g['ci_low']:+.4g}, {g['ci_high']:+.4g}]" for name, g in gains.items()]
        beaten = [name for name, g in gains.items() if g["better"]]
        verdict_line = (f"better on {', '.join(beaten)}" if beaten else
                        f"**not better than always answering \"{label}\"** ({confidence:.0%} intervals include "
                        "zero or lie below it)")
        lines.append(f"- {approach}: {'; '.join(cells)}: {verdict_line}.")
    for approach, table in majority["confusions"].items():
        lines += confusion_table(f"Confusions of {approach} (rows: reference label; columns: its answer)", table)
    return lines


def confusion_table(caption: str, table: dict[str, dict[str, int]]) -> list[str]:
    answered = sorted({a for row in table.values() for a in row})
    lines = ["", f"{caption}:", "", "| reference | " + " | ".join(answered) + " |", "|" + "---|" * (1 + len(answered))]
    return lines + [f"| {reference} | " + " | ".join(str(row.get(a, 0)) for a in answered) + " |"
                    for reference, row in table.items()]


def plot_chart(metrics: list[str], single: dict[str, dict[str, Interval]], path: str) -> None:
    """One panel per metric: the value of each approach with its confidence interval as error bars."""
    shown = [m for m in metrics if m != "loss"]
    figure, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.6), squeeze=False)
    approaches = list(single)
    colors = ["#8c8c8c", "#5b8def", "#f2a541", "#2ca25f", "#c44e52"]
    for axis, metric in zip(axes[0], shown):
        values = [single[a][metric].value for a in approaches]
        errors = [[v - single[a][metric].low for a, v in zip(approaches, values)],
                  [single[a][metric].high - v for a, v in zip(approaches, values)]]
        axis.bar(approaches, values, yerr=errors, capsize=5, color=colors[: len(approaches)])
        axis.set_title(f"{metric} ({'lower' if lower_is_better(metric) else 'higher'} is better)")
        axis.tick_params(axis="x", rotation=20)
        axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
