"""Promotion: gate the candidate, the approach the evaluation recommends (or the one params name), against the other
approaches, the generalist, the production model, forgetting and serving parity, and publish a passing one as the
production bundle (tasks/release/bundle.py) in one atomic switch."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from prefect import task

from tasks.core.approaches import ADAPTED, FINETUNED, GENERALIST, SHIPPABLE
from tasks.core.atomic_dir import write_dir_atomically
from tasks.core.params import RECOMMENDED, PromoteParams
from tasks.core.retries import TRANSIENT_RETRIES
from tasks.evaluate.decision import beats, relative_gain
from tasks.evaluate.score_files import ScoreFile
from tasks.evaluate.scoring import one_against_other
from tasks.evaluate.statistics import Interval
from tasks.release.bundle import Bundle
from tasks.release.lineage import file_digests

if TYPE_CHECKING:  # the server's module imports torch; promotions that fail early never need it
    from tasks.release.serving import ServedAnswer

EVAL_SCORES = "eval_scores.json"  # the production bundle's per-example scores, for paired comparisons


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


def candidate_of(metrics: dict[str, Any], params: PromoteParams) -> str:
    """The approach to ship: the evaluation's recommendation, or the one params name."""
    return metrics["decision"]["recommended"] if params.approach == RECOMMENDED else params.approach


def margin_gate(name: str, metric: str, gain: Interval, reference: float, min_relative: float, against: str) -> Gate:
    """Pass when the candidate is better by at least min_relative AND the interval of the gain excludes zero."""
    relative = relative_gain(gain, reference)
    passed = beats(gain, reference, min_relative)
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
    (shipped, current), = production.approaches.items()
    (approach, scores), = candidate.approaches.items()
    _, reference, gain = one_against_other(candidate.task, scores, current, candidate.examples, params.metric,
                                           samples, confidence, seed)
    return margin_gate("beats_production", params.metric, gain, reference.value, params.min_relative_improvement,
                       f"production ({shipped})")


def specialization_gate(decision: dict[str, Any], candidate: str) -> Gate:
    """Fail for the generalist: the base model as it is is nothing to ship. A recommended candidate that is not the
    generalist comes with a best approach that beats the generalist by the margin (else the generalist, the
    cheapest, would be recommended); one named in params may not, and the detail says so."""
    if candidate == GENERALIST:
        return Gate("specializes", 0.0, 1.0, "fail", "the generalist, the base model as it is, is recommended: no "
                    "approach measurably beats it on this data, so there is no specialization to ship")
    helps = GENERALIST not in decision["tied_with_best"]
    return Gate("specializes", 1.0, 1.0, "pass", (
        f"{candidate} specializes the base model; the best approach ({decision['best']}) beats the generalist by "
        "the margin with a CI excluding zero" if helps else
        f"{candidate} specializes the base model, but no approach measurably beats the generalist on this data "
        "(shipped because promote.approach names it)"))


def promotion_gates(metrics: dict[str, Any], params: PromoteParams, candidate: str, production: Gate,
                    recommended_only: bool = False) -> list[Gate]:
    """Every check the candidate approach must pass but serving parity, each with its value and threshold: no other
    approach beats it (or, `recommended_only`, it is the recommended one), it is not the generalist, it beats
    production and, where its model changed, it forgets little."""
    finite = all(math.isfinite(float(v)) for v in metrics[candidate].values())
    metric, decision = params.metric, metrics["decision"]
    tied = decision["tied_with_best"]
    standing = (f"{candidate} is " + ("the best" if candidate == decision["best"] else
                                      f"tied with the best ({decision['best']})" if candidate in tied else
                                      f"beaten by {decision['best']}") + f" on {metric}; recommended: "
                f"{decision['recommended']}")
    chosen = candidate == decision["recommended"] if recommended_only else candidate in tied
    gates = [Gate("finite_metrics", float(finite), 1.0, "pass" if finite else "fail",
                  "every candidate metric is a finite number"),
             Gate("recommended" if recommended_only else "not_beaten", float(chosen), 1.0,
                  "pass" if chosen else "fail", standing)]
    gates.append(specialization_gate(decision, candidate))
    gates.append(production)
    if candidate in ADAPTED:
        forgetting = metrics["forgetting"]["relative_increase"]
        gates.append(Gate("forgetting", forgetting, params.max_forgetting,
                          "pass" if math.isfinite(forgetting) and forgetting <= params.max_forgetting else "fail",
                          f"general-domain perplexity rose {forgetting:+.1%} (at most {params.max_forgetting:+.1%} "
                          "allowed)"))
    else:
        gates.append(Gate("forgetting", None, params.max_forgetting, "skipped",
                          f"{candidate} serves the base model's weights unchanged"))
    return gates


@dataclass(frozen=True)
class Expected:
    """A held-out example as evaluation saw it: its position, the prompt's token ids, the answer and whether it
    ended before max_new_tokens."""

    row: int
    prompt: list[int]
    answer: str
    ended: bool


def parity_gate(expected: Sequence[Expected], served: Sequence[ServedAnswer]) -> Gate:
    """Pass when `tailor serve` asked the same prompt token for token and gave the same greedy answer on every
    example, and stopped where evaluation stopped; fail naming the first that differs."""
    for example, answer_served in zip(expected, served, strict=True):
        prompt, answer, stopped = answer_served.prompt, answer_served.text, answer_served.stopped
        where = f"held-out example {example.row}"
        if prompt != example.prompt:
            at = next((i for i, (a, b) in enumerate(zip(prompt, example.prompt)) if a != b),
                      min(len(prompt), len(example.prompt)))
            return Gate("parity", example.row, 0, "fail",
                        f"{where}: the served prompt differs from the evaluated one from token {at} on "
                        f"({len(prompt)} tokens served, {len(example.prompt)} evaluated); the chat template or the "
                        "prompt changed since evaluation: run `dvc repro` so evaluation sees what serving sees")
        if answer.strip() != example.answer or stopped != example.ended:
            return Gate("parity", example.row, 0, "fail",
                        f"{where}: served {answer.strip()!r} ({'stopped' if stopped else 'ran to max tokens'}) where "
                        f"evaluation answered {example.answer!r} ({'stopped' if example.ended else 'ran to max tokens'})"
                        "; the model, its chat template or its settings changed since evaluation: run `dvc repro`")
    return Gate("parity", None, 0, "pass",
                f"`tailor serve` answered {len(expected)} held-out examples with the evaluated prompt tokens, the same "
                "greedy answers and the same stops")


def how_it_answers(bundle: Bundle, base_dir: Path) -> str:
    """The bundle's approach in words: which weights, then what goes before each conversation."""
    recipe = bundle.recipe
    parts = [f"the base model `{base_dir}` with " + ("this folder's adapter" if bundle.model == "adapter"
                                                      else "its weights unchanged")]
    parts.append(f"the system prompt \"{recipe.system_prompt}\"" if recipe.system_prompt
                 else "the chat template's default system prompt")
    if recipe.examples:
        parts.append(f"{len(recipe.examples)} fixed training examples before each question (`approach.json`)")
    if recipe.retrieval_k:
        parts.append(f"the {recipe.retrieval_k} training examples nearest each question, searched in `retrieval_index/`")
    return "; ".join(parts) + f"; greedy answers of at most {bundle.max_new_tokens} tokens by default"


def model_card(lineage: dict[str, Any], gates: list[Gate], bundle: Bundle, base_dir: Path, out_dir: Path) -> str:
    """A Hugging Face-style model card for the bundle published at out_dir on base_dir: YAML front matter, then which
    approach it is and why it was shipped, how it scores, and how to use it."""
    metrics = lineage["metrics"]
    approaches = [a for a in SHIPPABLE if a in metrics]
    # The multi-task model is scored on a task as its fine-tuned candidate, among that task's baselines.
    scored = bundle.approach if bundle.approach in metrics else FINETUNED
    names = [m for m in metrics[scored] if not m.endswith(("_ci_low", "_ci_high"))]
    rows = "\n".join(f"| {name} | " + " | ".join(str(metrics[a].get(name, "")) for a in approaches) + " |"
                     for name in names)
    adapter = bundle.model == "adapter"
    front = yaml.safe_dump({**({"library_name": "peft"} if adapter else {}), "base_model": str(base_dir),
                            "pipeline_tag": "text-generation", "tags": ["tailor", bundle.approach]}, sort_keys=False)
    gate_lines = "\n".join(f"- {g.status.upper()} {g.name}: {g.detail}" for g in gates)
    template = lineage.get("params", {}).get("tokenize", {}).get("chat_template", "auto")
    chat = "" if template == "auto" or not adapter else (  # chosen in params for a base model (chat_templates.py)
        f"## Chat template\n\n`{template}` (params: `tokenize.chat_template`), set on `{base_dir}` by the base_model "
        "stage and saved with this tokenizer; its end-of-turn token is the eos token, where generation stops. The "
        f"special tokens it writes (`tailor_chat_token_ids` in `{base_dir / 'config.json'}`) that the base tokenizer "
        "lacked were added there with new embedding rows; the embedding and output rows of all of them were trained "
        f"with the adapter and are saved in it (PEFT trainable tokens), so load it on `{base_dir}`, not on the "
        "original checkpoint.\n\n")
    data = lineage.get("params", {}).get("data", {})
    tools = "" if data.get("format") != "tools" else (
        "## Tool calls and reasoning\n\nTrained on tool-calling conversations in the Hermes convention inside the chat "
        "template (tasks/formats/hermes.py): the tools' JSON-schema definitions listed in the system message between "
        "`<tools>` and `</tools>`, each call written as `<tool_call>\\n{\"name\": …, \"arguments\": {…}}\\n</tool_call>` "
        "after the assistant's text, the results of a turn's calls as one user message of `<tool_response>` blocks"
        + (", and a reasoning trace as `<think>…</think>` opening the assistant's message"
           if data.get("reasoning", "train") == "train" else "; reasoning traces were stripped")
        + ". `tailor serve` takes OpenAI's `tools` and `tool_choice` and answers with `tool_calls` (and "
        "`reasoning_content`); `tailor export` writes a GGUF whose chat template renders them the same way.\n\n")
    use = ("`tailor serve` serves this folder exactly as it was evaluated (the promote stage checked it on held-out "
           "examples: see reports/promotion.json's `parity` gate)."
           + ("" if not adapter else
              " The adapter alone, in your own code (add what `approach.json` puts before each conversation):\n\n"
              "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\nfrom peft import PeftModel\n\n"
              f"base = AutoModelForCausalLM.from_pretrained(\"{base_dir}\")\n"
              f"model = PeftModel.from_pretrained(base, \"{out_dir}\")\n"
              f"tokenizer = AutoTokenizer.from_pretrained(\"{out_dir}\")\n```"))
    return (
        f"---\n{front}---\n\n# Specialized model (tailor): {bundle.approach}\n\n"
        f"Shipped by the tailor pipeline: the **{bundle.approach}** approach, {how_it_answers(bundle, base_dir)}. "
        "`lineage.json` records what it was built from: the hashes of its data, models and code in dvc.lock, params, "
        "the environment's lock and every file's sha256 (`tailor lineage` checks them).\n\n"
        f"## Evaluation on the held-out split\n\n| metric | {' | '.join(approaches)} |\n"
        f"|---|{'---|' * len(approaches)}\n{rows}\n\n{metrics.get('recommendation', '')}\n\n"
        f"## Promotion gates\n\n{gate_lines}\n\n{chat}{tools}## Use\n\n{use}\n\n"
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
def publish_production(staged: Path, bundle: Bundle, base_dir: Path, out_dir: Path, lineage: dict[str, Any],
                       gates: list[Gate], merge: bool, eval_scores: ScoreFile) -> Path:
    """Write the staged bundle, its tokenizer, model card and lineage, then switch production to it in one step."""

    def write(staging: Path) -> None:
        shutil.copytree(staged, staging)
        if bundle.model == "adapter" and not (staging / "tokenizer_config.json").exists():  # full saves its own
            from transformers import AutoTokenizer  # only here (see write_merged)

            AutoTokenizer.from_pretrained(base_dir).save_pretrained(staging)
        if merge and (staged / "adapter_config.json").is_file():
            write_merged(base_dir, staged, staging / "merged")
        (staging / "README.md").write_text(model_card(lineage, gates, bundle, base_dir, out_dir), encoding="utf-8")
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


def decision_record(gates: list[Gate], metric: str, approach: str, why: str) -> dict[str, Any]:
    promoted = all(g.passed for g in gates)
    return {"promoted": promoted, "approach": approach, "why": why, "metric": metric,
            "gates": [g.as_dict() for g in gates],
            "reason": "all gates passed" if promoted else
            "failed: " + ", ".join(g.name for g in gates if not g.passed) + "; production left unchanged"}
