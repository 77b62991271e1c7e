"""Promotion: gate the candidate (against the best baseline, the production model, forgetting), and publish a
passing one as the production model in one atomic switch."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from prefect import task

from tasks.core.approaches import BASELINES, FINETUNED
from tasks.core.atomic_dir import write_dir_atomically
from tasks.core.params import PromoteParams
from tasks.core.retries import TRANSIENT_RETRIES
from tasks.evaluate.score_files import ScoreFile
from tasks.evaluate.scoring import one_against_other
from tasks.evaluate.statistics import Interval
from tasks.release.lineage import file_digests

EVAL_SCORES = "eval_scores.json"  # the production model's per-example scores, for paired comparisons


@dataclass(frozen=True)
class Gate:
    name: str
    value: float | None
    threshold: float
    status: str  # pass | fail | skipped
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    @property
    def passed(self) -> bool:
        return self.status != "fail"


def relative_gain(gain: Interval, reference: float) -> float:
    """An improvement (positive = better) as a fraction of the reference approach's value."""
    return gain.value / abs(reference) if reference else (math.inf if gain.value > 0 else 0.0)


def margin_gate(name: str, metric: str, gain: Interval, reference: float, min_relative: float, against: str) -> Gate:
    """Pass when the candidate is better by at least min_relative AND the interval of the gain excludes zero."""
    relative = relative_gain(gain, reference)
    passed = relative >= min_relative and gain.better
    return Gate(name, round(relative, 5), min_relative, "pass" if passed else "fail",
                f"{metric} vs {against}: improvement {gain.value:+.4g} ({relative:+.1%}, needs at least "
                f"{min_relative:+.1%}), CI [{gain.low:+.4g}, {gain.high:+.4g}]"
                + ("" if gain.better else " is below zero: worse" if gain.high < 0 else " includes zero"))


def production_gate(candidate: ScoreFile, production_dir: Path, params: PromoteParams, samples: int,
                    confidence: float, seed: int) -> Gate:
    """The candidate against the current production model, paired on the same examples."""
    recorded = production_dir / EVAL_SCORES
    if not recorded.is_file():
        why = ("no production model yet" if not (production_dir / "lineage.json").is_file()
               else f"production has no {EVAL_SCORES} to compare with (promoted by an older tailor)")
        return Gate("beats_production", None, params.min_relative_improvement, "skipped", why)
    try:
        production = ScoreFile.read(recorded)
    except (KeyError, TypeError):
        return Gate("beats_production", None, params.min_relative_improvement, "skipped",
                    f"production's {EVAL_SCORES} is in an older tailor's format; its scores are not comparable")
    if production.examples != candidate.examples or production.task != candidate.task:
        return Gate("beats_production", None, params.min_relative_improvement, "skipped",
                    "production was scored on other eval examples; its scores are not comparable")
    _, current, gain = one_against_other(candidate.task, candidate.approaches[FINETUNED],
                                         production.approaches[FINETUNED], candidate.references(), params.metric,
                                         samples, confidence, seed)
    return margin_gate("beats_production", params.metric, gain, current.value, params.min_relative_improvement,
                       "production")


def promotion_gates(metrics: dict[str, Any], params: PromoteParams, production: Gate) -> list[Gate]:
    """Every check a candidate must pass, each with its value and threshold."""
    candidate = metrics[FINETUNED]
    finite = all(math.isfinite(float(v)) for v in candidate.values())
    metric = params.metric
    best = metrics["best_baseline"]
    comparison = metrics["comparisons"][f"finetuned_vs_{best}"][metric]
    gain = Interval(comparison["value"], comparison["ci_low"], comparison["ci_high"])
    forgetting = metrics["forgetting"]["relative_increase"]
    return [
        Gate("finite_metrics", float(finite), 1.0, "pass" if finite else "fail",
             "every candidate metric is a finite number"),
        margin_gate("beats_best_baseline", metric, gain, metrics[best][metric], params.min_relative_improvement,
                    f"best baseline ({best})"),
        production,
        Gate("forgetting", forgetting, params.max_forgetting,
             "pass" if math.isfinite(forgetting) and forgetting <= params.max_forgetting else "fail",
             f"general-domain perplexity rose {forgetting:+.1%} (at most {params.max_forgetting:+.1%} allowed)"),
    ]


def model_card(lineage: dict[str, Any], gates: list[Gate], base_dir: Path, out_dir: Path) -> str:
    """A Hugging Face-style model card for the model published at out_dir on base_dir: YAML front matter, then how
    it was made and how it scores."""
    metrics = lineage["metrics"]
    approaches = [a for a in (*BASELINES, FINETUNED) if a in metrics]
    names = [m for m in metrics[FINETUNED] if not m.endswith(("_ci_low", "_ci_high"))]
    rows = "\n".join(f"| {name} | " + " | ".join(str(metrics[a].get(name, "")) for a in approaches) + " |"
                     for name in names)
    front = yaml.safe_dump({"library_name": "peft", "base_model": str(base_dir), "pipeline_tag": "text-generation",
                            "tags": ["tailor", "lora"]}, sort_keys=False)
    gate_lines = "\n".join(f"- {g.status.upper()} {g.name}: {g.detail}" for g in gates)
    template = lineage.get("params", {}).get("tokenize", {}).get("chat_template", "auto")
    chat = "" if template == "auto" else (  # chosen in params for a base model (tasks/model/chat_templates.py)
        f"## Chat template\n\n`{template}` (params: `tokenize.chat_template`), set on `{base_dir}` by the base_model "
        "stage and saved with this tokenizer; its end-of-turn token is the eos token, where generation stops. The "
        f"special tokens it writes (`tailor_chat_token_ids` in `{base_dir / 'config.json'}`) that the base tokenizer "
        "lacked were added there with new embedding rows; the embedding and output rows of all of them were trained "
        f"with the adapter and are saved in it (PEFT trainable tokens), so load it on `{base_dir}`, not on the "
        "original checkpoint.\n\n")
    return (
        f"---\n{front}---\n\n# Specialized model (tailor)\n\n"
        f"Fine-tuned from `{base_dir}` by the tailor pipeline. `lineage.json` records what it was built from: the "
        "hashes of its data, models and code in dvc.lock, params, the environment's lock and every file's sha256 "
        "(`tailor lineage` checks them).\n\n"
        f"## Evaluation on the held-out split\n\n| metric | {' | '.join(approaches)} |\n"
        f"|---|{'---|' * len(approaches)}\n{rows}\n\n{metrics.get('recommendation', '')}\n\n"
        f"## Promotion gates\n\n{gate_lines}\n\n{chat}"
        "## Use\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\nfrom peft import PeftModel\n\n"
        f"base = AutoModelForCausalLM.from_pretrained(\"{base_dir}\")\n"
        f"model = PeftModel.from_pretrained(base, \"{out_dir}\")\n"
        f"tokenizer = AutoTokenizer.from_pretrained(\"{out_dir}\")\n```\n\n"
        "Data, tokenized set and base model hashes, params and library versions: `lineage.json`.\n"
    )


def write_merged(base_dir: Path, adapter_dir: Path, dest: Path) -> None:
    """A standalone model: the LoRA weights folded into the base weights."""
    # Imported here, not at the top: most promotions only copy files and compare scores, and importing the
    # modeling stack (torch, transformers, peft) would add seconds to every one of them (benchmarks/RESULTS.md).
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_dir, use_safetensors=True)
    PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().save_pretrained(dest)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(dest)


@task(**TRANSIENT_RETRIES)
def publish_production(candidate_dir: Path, base_dir: Path, out_dir: Path, lineage: dict[str, Any],
                       gates: list[Gate], merge: bool, eval_scores: ScoreFile) -> Path:
    """Write the candidate, its tokenizer, model card and lineage, then switch production to it in one step."""

    def write(staging: Path) -> None:
        shutil.copytree(candidate_dir, staging)
        if not (staging / "tokenizer_config.json").exists():  # full fine-tuning saves its own tokenizer
            from transformers import AutoTokenizer  # only here (see write_merged)

            AutoTokenizer.from_pretrained(base_dir).save_pretrained(staging)
        if merge and (candidate_dir / "adapter_config.json").is_file():
            write_merged(base_dir, candidate_dir, staging / "merged")
        (staging / "README.md").write_text(model_card(lineage, gates, base_dir, out_dir), encoding="utf-8")
        eval_scores.write(staging / EVAL_SCORES)
        # Last, over everything above: `tailor lineage` and `tailor serve` check the files against it.
        (staging / "lineage.json").write_text(json.dumps({**lineage, "files": file_digests(staging)}, indent=2)
                                              + "\n", encoding="utf-8")

    return write_dir_atomically(out_dir, write)


def hold_production_place(production_dir: Path, reason: str) -> None:
    """Before any model is promoted, production is a directory with only a note saying why: it is a DVC
    output, so it must exist for `dvc repro` to record the run; a later promotion replaces it whole."""
    if production_dir.exists():
        return
    note = (f"# No production model yet\n\nNo candidate has passed the promotion gates so far ({reason}).\n"
            "See reports/promotion.json for every gate, and reports/specialization.md for the comparison.\n")
    write_dir_atomically(production_dir, lambda staging: (staging.mkdir(), (staging / "README.md").write_text(note)))


def decision_record(gates: list[Gate], metric: str) -> dict[str, Any]:
    promoted = all(g.passed for g in gates)
    return {"promoted": promoted, "metric": metric, "gates": [g.as_dict() for g in gates],
            "reason": "all gates passed" if promoted else
            "failed: " + ", ".join(g.name for g in gates if not g.passed) + "; production left unchanged"}
