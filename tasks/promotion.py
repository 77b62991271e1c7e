"""Promotion: gate the candidate against the base model; publish a passing one as the production model."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml
from peft import PeftModel
from prefect import task
from prefect.cache_policies import NO_CACHE
from transformers import AutoModelForCausalLM, AutoTokenizer

from tasks.atomic_dir import write_dir_atomically
from tasks.params import PromoteParams

LOWER_IS_BETTER = {"perplexity", "loss"}
LIBRARIES = ("torch", "transformers", "peft", "datasets", "prefect", "dvc", "great-expectations", "dvclive")


@dataclass(frozen=True)
class Gate:
    name: str
    value: float
    threshold: float
    passed: bool
    detail: str


def relative_improvement(metric: str, base: float, candidate: float) -> float:
    """How much better the candidate is than the base, as a fraction of the base (positive = better)."""
    if base == 0:
        return math.inf if candidate != base else 0.0
    change = (base - candidate) if metric in LOWER_IS_BETTER else (candidate - base)
    return change / abs(base)


def promotion_gates(metrics: dict[str, dict[str, float]], params: PromoteParams) -> list[Gate]:
    """Every check a candidate must pass, each with its value and threshold."""
    candidate, base = metrics["finetuned"], metrics["base"]
    finite = all(math.isfinite(float(v)) for v in candidate.values())
    gates = [Gate("finite_metrics", float(finite), 1.0, finite, "every candidate metric is a finite number")]
    if params.metric not in candidate:
        gates.append(Gate(f"{params.metric}_available", 0.0, 1.0, False,
                          f"{params.metric} was not computed for this data format; choose promote.metric perplexity"))
        return gates
    gain = relative_improvement(params.metric, base[params.metric], candidate[params.metric])
    gates.append(Gate(
        f"{params.metric}_vs_base", round(gain, 5), params.min_relative_improvement,
        finite and gain >= params.min_relative_improvement,
        f"{params.metric}: candidate {candidate[params.metric]} vs base {base[params.metric]} "
        f"({gain:+.1%}, needs at least {params.min_relative_improvement:+.1%})",
    ))
    return gates


def locked_hashes(lock_file: Path = Path("dvc.lock")) -> dict[str, str]:
    """Path -> content hash of every dep and out that dvc.lock records (empty outside a DVC run)."""
    if not lock_file.is_file():
        return {}
    stages = (yaml.safe_load(lock_file.read_text(encoding="utf-8")) or {}).get("stages", {}).values()
    hashes = {entry["path"]: entry.get("md5", "") for stage in stages for entry in stage.get("deps", [])}
    # The producing stage's out wins: a consumer's dep (promote's own, above all) may predate this run.
    hashes.update({entry["path"]: entry.get("md5", "") for stage in stages for entry in stage.get("outs", [])})
    return hashes


def git_revision() -> str:
    """The commit the pipeline ran from, with '-dirty' when tracked files had uncommitted changes."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("-dirty" if dirty else "")


def library_versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def build_lineage(params: dict[str, Any], metrics: dict[str, Any], validation_passed: bool,
                  inputs: list[str]) -> dict[str, Any]:
    """Everything needed to rebuild or audit the production model."""
    hashes = locked_hashes()
    return {
        "git_revision": git_revision(),
        "inputs": {path: hashes.get(path, "not recorded (run through dvc repro)") for path in inputs},
        "params": params,
        "validation_passed": validation_passed,
        "metrics": metrics,
        "libraries": library_versions(),
    }


def model_card(lineage: dict[str, Any], gates: list[Gate]) -> str:
    """A Hugging Face-style model card: YAML front matter, then how it was made and how it scores."""
    base, tuned = lineage["metrics"]["base"], lineage["metrics"]["finetuned"]
    rows = "\n".join(f"| {name} | {base.get(name, '')} | {tuned.get(name, '')} |" for name in tuned)
    front = yaml.safe_dump({"library_name": "peft", "base_model": "models/base", "pipeline_tag": "text-generation",
                            "tags": ["tailor", "lora"]}, sort_keys=False)
    gate_lines = "\n".join(f"- {'PASS' if g.passed else 'FAIL'} {g.name}: {g.detail}" for g in gates)
    return (
        f"---\n{front}---\n\n# Specialized model (tailor)\n\n"
        f"Fine-tuned from `models/base` by the tailor pipeline at git revision `{lineage['git_revision']}`.\n\n"
        "## Evaluation on the held-out split\n\n| metric | base | fine-tuned |\n|---|---|---|\n"
        f"{rows}\n\n## Promotion gates\n\n{gate_lines}\n\n"
        "## Use\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\nfrom peft import PeftModel\n\n"
        "base = AutoModelForCausalLM.from_pretrained(\"models/base\")\n"
        "model = PeftModel.from_pretrained(base, \"models/production\")\n"
        "tokenizer = AutoTokenizer.from_pretrained(\"models/production\")\n```\n\n"
        "Data, tokenized set and base model hashes, params and library versions: `lineage.json`.\n"
    )


def write_merged(base_dir: Path, adapter_dir: Path, dest: Path) -> None:
    """A standalone model: the LoRA weights folded into the base weights."""
    base = AutoModelForCausalLM.from_pretrained(base_dir, use_safetensors=True)
    PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().save_pretrained(dest)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(dest)


@task(cache_policy=NO_CACHE)
def publish_production(candidate_dir: Path, base_dir: Path, out_dir: Path, lineage: dict[str, Any],
                       gates: list[Gate], merge: bool) -> Path:
    """Write the candidate, its tokenizer, model card and lineage, then switch production to it in one step."""

    def write(staging: Path) -> None:
        shutil.copytree(candidate_dir, staging)
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            if (base_dir / name).is_file() and not (staging / name).exists():
                shutil.copy2(base_dir / name, staging / name)
        if merge and (candidate_dir / "adapter_config.json").is_file():
            write_merged(base_dir, candidate_dir, staging / "merged")
        (staging / "README.md").write_text(model_card(lineage, gates), encoding="utf-8")
        (staging / "lineage.json").write_text(json.dumps(lineage, indent=2) + "\n", encoding="utf-8")

    return write_dir_atomically(out_dir, write)


def decision_record(gates: list[Gate], metric: str) -> dict[str, Any]:
    promoted = all(g.passed for g in gates)
    return {"promoted": promoted, "metric": metric, "gates": [asdict(g) for g in gates],
            "reason": "all gates passed" if promoted else
            "failed: " + ", ".join(g.name for g in gates if not g.passed) + "; production left unchanged"}
