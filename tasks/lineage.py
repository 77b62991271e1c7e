"""Lineage of a promoted model: what it was built from (dvc.lock hashes, params, git revision, libraries), and the
check behind `tailor lineage`, which compares it with the current dvc.lock and workspace."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Collection, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml

from tasks.errors import UserError
from tasks.params import load_params

LIBRARIES = ("torch", "transformers", "peft", "datasets", "prefect", "dvc", "great-expectations", "dvclive")
LOCK_FILE = Path("dvc.lock")


def locked_hashes(lock_file: Path = LOCK_FILE) -> dict[str, str]:
    """Path -> content hash of every dep and out that dvc.lock records (empty outside a DVC run)."""
    if not lock_file.is_file():
        return {}
    stages = (yaml.safe_load(lock_file.read_text(encoding="utf-8")) or {}).get("stages", {}).values()
    hashes = {entry["path"]: entry.get("md5", "") for stage in stages for entry in stage.get("deps", [])}
    # The producing stage's out wins: a consumer's dep (promote's own, above all) may predate this run.
    hashes.update({entry["path"]: entry.get("md5", "") for stage in stages for entry in stage.get("outs", [])})
    return hashes


def library_versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def model_inputs(models: Collection[Path], lock_file: Path = LOCK_FILE) -> dict[str, str]:
    """Path -> hash, from dvc.lock, of everything the model's weights were built from: the model directories and,
    stage by stage back through the DAG, the outputs they came from and those stages' data inputs. Reports written
    beside them (evaluation scores with their timings, data docs) do not make the model and are left out, so a
    re-run evaluation does not make an unchanged model look different. Code is pinned by the git revision."""
    if not lock_file.is_file():
        return {}
    stages = list((yaml.safe_load(lock_file.read_text(encoding="utf-8")) or {}).get("stages", {}).values())
    inputs: dict[str, str] = {}
    pending, seen = [str(path) for path in models], set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for stage in stages:
            for out in stage.get("outs", []):
                if path == out["path"] or path.startswith(out["path"] + "/"):
                    inputs[out["path"]] = out.get("md5", "")  # the producing stage's record wins over a consumer's
                    for dep in stage.get("deps", []):
                        if not dep["path"].endswith(".py"):
                            inputs.setdefault(dep["path"], dep.get("md5", ""))
                            pending.append(dep["path"])
    return dict(sorted(inputs.items()))


def build_lineage(params: dict[str, Any], metrics: dict[str, Any], validation_passed: bool, revision: str,
                  models: Collection[Path]) -> dict[str, Any]:
    """Everything needed to rebuild or audit the production model made from `models` (the candidate and its
    base): what they were built from, params, git revision, libraries, and the metrics that promoted them."""
    return {
        "git_revision": revision,
        "inputs": model_inputs(models),
        "params": params,
        "validation_passed": validation_passed,
        "metrics": metrics,
        "libraries": library_versions(),
    }


def dvc_status(targets: Sequence[str] = ()) -> dict[str, Any]:
    """`dvc status --json`: per stage (of `targets` and what they need, or all), what changed since dvc.lock was
    written (empty: everything is up to date)."""
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--json", *targets], capture_output=True,
                            text=True)
    if status.returncode != 0:
        raise UserError(f"`dvc status` failed; run from the repository root:\n{status.stderr.strip()}")
    return json.loads(status.stdout or "{}")


def workspace_changes() -> dict[str, str]:
    """Path -> how it differs from dvc.lock in the workspace ("modified", "deleted", ...)."""
    changes: dict[str, str] = {}
    for entries in dvc_status().values():
        for entry in entries:
            if isinstance(entry, dict):
                for kind in ("changed deps", "changed outs"):
                    for path, how in entry.get(kind, {}).items():
                        changes[path] = how if isinstance(how, str) else "changed: " + ", ".join(how)
    return changes


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}, to compare params key by key."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def lineage_differences(lineage: dict[str, Any], locked: dict[str, str], changed: dict[str, str],
                        params: dict[str, Any]) -> list[str]:
    """Every way the model's recorded lineage differs from dvc.lock, the workspace and params.yaml."""
    problems = []
    for path, recorded in lineage["inputs"].items():
        if path not in locked:
            problems.append(f"{path}: not in dvc.lock any more")
        elif locked[path] != recorded:
            problems.append(f"{path}: the model was built from {recorded}, dvc.lock now records {locked[path]}")
        if path in changed:
            problems.append(f"{path}: {changed[path]} in the workspace since dvc.lock was written")
    was, now = flatten(lineage["params"]), flatten(params)
    for key in sorted(was.keys() | now.keys()):
        if was.get(key) != now.get(key):
            problems.append(f"params.yaml {key}: the model was built with {was.get(key)!r}, now {now.get(key)!r}")
    return problems


def read_lineage(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "lineage.json"
    if not path.is_file():
        raise UserError(f"{path} not found: {model_dir} is not a promoted model (run `dvc repro` until one is "
                        "promoted, or `dvc pull` to fetch it)")
    return json.loads(path.read_text(encoding="utf-8"))


def show_lineage(model_dir: Path) -> int:
    """Print the model's lineage and how it compares with dvc.lock; 0 when everything matches, 1 otherwise."""
    lineage = read_lineage(model_dir)
    print(f"{model_dir}: built at git revision {lineage['git_revision']}, "
          f"data validation {'passed' if lineage['validation_passed'] else 'FAILED'}")
    for path, digest in lineage["inputs"].items():
        print(f"  {path:<28} {digest}")
    print("  libraries: " + ", ".join(f"{name} {v}" for name, v in lineage["libraries"].items()))
    params = load_params().model_dump(mode="json", by_alias=True)
    problems = lineage_differences(lineage, locked_hashes(), workspace_changes(), params)
    if not problems:
        print("matches dvc.lock, the workspace and params.yaml: `dvc repro` would rebuild this model")
        return 0
    print(f"DIFFERS from the current state ({len(problems)}):")
    for problem in problems:
        print(f"  - {problem}")
    print("`dvc repro` would build a different model; `git checkout` + `dvc checkout` the revision above to "
          "rebuild this one")
    return 1
