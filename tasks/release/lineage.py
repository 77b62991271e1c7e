"""Lineage of a promoted model: what it was built from (dvc.lock's hashes of its data, models and code, params, the
environment's lock and libraries), and the check behind `tailor lineage`, which compares it with the current dvc.lock,
workspace and environment."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from collections.abc import Collection, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml

from tasks.core.dag import PIPELINE, PORTFOLIO
from tasks.core.errors import UserError
from tasks.core.params import load_params

LIBRARIES = ("torch", "transformers", "peft", "datasets", "prefect", "dvc", "great-expectations", "dvclive")
# What DVC records of each pipeline: your own specialization's (dvc.yaml) and the portfolio's (portfolio/dvc.yaml).
LOCK_FILES = (PIPELINE.with_suffix(".lock"), PORTFOLIO.with_suffix(".lock"))
# Written by `make install`: which environment lock (locks/cpu.txt or locks/cuda.txt) it installed, and its sha256.
ENVIRONMENT_MARKER = Path(sys.prefix) / "tailor-lock"


def locked_stages(lock_files: Sequence[Path] = LOCK_FILES) -> list[dict[str, Any]]:
    """Every stage's record in the dvc.lock files that exist (none outside a DVC repository)."""
    return [stage for lock_file in lock_files if lock_file.is_file()
            for stage in ((yaml.safe_load(lock_file.read_text(encoding="utf-8")) or {}).get("stages") or {}).values()]


def locked_hashes(lock_files: Sequence[Path] = LOCK_FILES) -> dict[str, str]:
    """Path -> content hash of every dep and out that the dvc.lock files record."""
    stages = locked_stages(lock_files)
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


def environment_lock(marker: Path = ENVIRONMENT_MARKER) -> dict[str, str] | None:
    """{"file", "sha256"} of the lock this environment was installed from; None when it was not installed by
    `make install` (a hand-made environment: its libraries are recorded, but nothing pins the rest)."""
    if not marker.is_file():
        return None
    file, digest = marker.read_text(encoding="utf-8").split()
    return {"file": file, "sha256": digest}


def environment_differences(recorded: dict[str, str] | None, current: dict[str, str] | None) -> list[str]:
    """How the environment the model was built in differs from this one, and this one from its lock file now."""
    def name(lock: dict[str, str] | None) -> str:
        return f"{lock['file']} (sha256 {lock['sha256'][:12]})" if lock else "no lock (not installed by make install)"

    problems = []
    if recorded != current:
        problems.append(f"environment: the model was built in the one of {name(recorded)}, this one is of "
                        f"{name(current)}; `make install` installs the lock of this checkout")
    if current and Path(current["file"]).is_file():
        now = hashlib.sha256(Path(current["file"]).read_bytes()).hexdigest()
        if now != current["sha256"]:
            problems.append(f"environment: {current['file']} changed since this environment was installed; run "
                            "`make install`")
    return problems


def compute() -> dict[str, str]:
    """What the arithmetic ran on. PyTorch picks its CPU kernels by instruction set (AVX2, AVX512, ...) and its GPU
    kernels by device, so the same training on another of either gives weights that differ in the last bits: the
    same locked environment reproduces data, tokenization and the base model everywhere, training's bytes only on
    the same kind of processor."""
    import torch  # here, not at the top: `tailor lineage` reads a lineage without training anything

    return {"machine": platform.machine(), "cpu_kernels": torch.backends.cpu.get_cpu_capability(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none"}


def described(fields: dict[str, str]) -> str:
    return ", ".join(f"{key} {value}" for key, value in fields.items())


def compute_note(recorded: dict[str, str] | None, current: dict[str, str]) -> str | None:
    """Why a rebuild here may give other bytes than the model's, if it may. Not a difference of the model itself:
    the pulled model is the recorded one on any machine."""
    if recorded is None or recorded == current:
        return None
    return (f"note: the model was trained on {described(recorded)}; this machine is {described(current)}: a re-run of "
            "training here gives weights that differ in the last bits, so `dvc repro` after a change would not "
            "rebuild the recorded hashes from finetune on (see docs/environment.md)")


def file_digests(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file in a promoted folder but lineage.json, which records them."""
    digests = {}
    for file in sorted(path for path in folder.rglob("*") if path.is_file()):
        name = file.relative_to(folder).as_posix()
        if name != "lineage.json":
            with file.open("rb") as stream:
                digests[name] = hashlib.file_digest(stream, "sha256").hexdigest()
    return digests


def tampering(folder: Path, lineage: dict[str, Any]) -> list[str]:
    """How the promoted folder's files differ from the digests its lineage recorded at promotion (empty: intact)."""
    recorded, now = lineage.get("files"), file_digests(folder)
    if recorded is None:
        return [f"{folder}/lineage.json records no file digests (promoted before they were recorded): promote again"]
    problems = [f"{folder}/{name}: {'missing' if name not in now else 'modified'} since promotion"
                for name in recorded if now.get(name) != recorded[name]]
    return problems + [f"{folder}/{name}: added since promotion" for name in now if name not in recorded]


def model_inputs(models: Collection[Path], lock_files: Sequence[Path] = LOCK_FILES) -> dict[str, str]:
    """Path -> hash, from dvc.lock, of everything the model's weights were built from: the model directories and,
    stage by stage back through the DAG, the outputs they came from and those stages' data inputs. Reports written
    beside them (evaluation scores, reports) do not make the model and are left out, so a re-run evaluation does
    not make an unchanged model look different. Code is pinned by its files' hashes rather than a git revision:
    the commit that builds a model is never the one that records its dvc.lock, so a revision would make the
    promoted folder differ on every fresh clone."""
    stages = locked_stages(lock_files)
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
                        inputs.setdefault(dep["path"], dep.get("md5", ""))
                        pending.append(dep["path"])
    return dict(sorted(inputs.items()))


def build_lineage(params: dict[str, Any], metrics: dict[str, Any], validation_passed: bool,
                  models: Collection[Path]) -> dict[str, Any]:
    """Everything needed to rebuild or audit the production model made from `models` (the candidate and its
    base): what they were built from (data, models, code), params, libraries, and the metrics that promoted them."""
    return {
        "models": [str(path) for path in models],
        "inputs": model_inputs(models),
        "params": params,
        "validation_passed": validation_passed,
        "metrics": metrics,
        "environment_lock": environment_lock(),
        "libraries": library_versions(),
        "compute": compute(),
    }


def dvc_status(targets: Sequence[str] = ()) -> dict[str, Any]:
    """`dvc status --json`: per stage (of `targets` and what they need, or all), what changed since dvc.lock was
    written (empty: everything is up to date)."""
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--json", *targets], capture_output=True,
                            text=True)
    if status.returncode != 0:
        raise UserError(f"`dvc status` failed; run from the repository root:\n{status.stderr.strip()}")
    return json.loads(status.stdout or "{}")


def status_targets(models: Sequence[str]) -> list[str]:
    """What `dvc status` is asked about for models: the pipeline that built them. A model of your own pipeline is
    built by dvc.yaml's stages alone, so the portfolio's records (older ones, until `make portfolio` runs again)
    say nothing about it; a portfolio's model, by portfolio/dvc.yaml and the stages of dvc.yaml it depends on."""
    own = {out["path"] for stage in locked_stages(LOCK_FILES[:1]) for out in stage.get("outs", [])}
    if models and all(any(m == out or m.startswith(out + "/") for out in own) for m in models):
        return [str(PIPELINE)]
    return ["--with-deps", str(PORTFOLIO)] if models else []


def workspace_changes(targets: Sequence[str] = ()) -> dict[str, str]:
    """Path -> how it differs from dvc.lock in the workspace ("modified", "deleted", ...), for the stages of
    `targets` (all when empty). An output is compared with its producing stage's record only: a consumer's older
    record of it says that the consumer is out of date, not that the output changed."""
    produced = {out["path"] for stage in locked_stages() for out in stage.get("outs", [])}
    changes: dict[str, str] = {}
    for entries in dvc_status(targets).values():
        for entry in entries:
            if isinstance(entry, dict):
                for kind in ("changed deps", "changed outs"):
                    for path, how in entry.get(kind, {}).items():
                        if kind == "changed deps" and path in produced:
                            continue
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
                        params: dict[str, Any], environment: dict[str, str] | None) -> list[str]:
    """Every way the model's recorded lineage differs from dvc.lock, the workspace, params.yaml and the environment's
    lock."""
    problems = environment_differences(lineage.get("environment_lock"), environment)
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
    print(f"{model_dir}: built from {len(lineage['inputs'])} inputs (data, models, code), "
          f"data validation {'passed' if lineage['validation_passed'] else 'FAILED'}, "
          f"{len(lineage.get('files', {}))} files with their sha256")
    for path, digest in lineage["inputs"].items():
        print(f"  {path:<28} {digest}")
    lock = lineage.get("environment_lock")
    print(f"  environment: {lock['file']} sha256 {lock['sha256']}" if lock else "  environment: not from a lock")
    print("  libraries: " + ", ".join(f"{name} {v}" for name, v in lineage["libraries"].items()))
    here = compute()
    print(f"  compute: {described(lineage['compute']) if 'compute' in lineage else 'not recorded'}")
    note = compute_note(lineage.get("compute"), here)
    params = load_params().model_dump(mode="json", by_alias=True)
    problems = tampering(model_dir, lineage)
    # What dvc.lock now records along the same walk back from the same models: a code file is a dependency of many
    # stages, and one that has not re-run since (a portfolio stage, say) still records its older hash. A lineage
    # written before "models" was recorded is compared with every record.
    models = lineage.get("models")
    locked = model_inputs([Path(m) for m in models]) if models else locked_hashes()
    changed = workspace_changes(status_targets(models or []))
    problems += lineage_differences(lineage, locked, changed, params, environment_lock())
    if note:
        print(note)
    if not problems:
        print("matches dvc.lock, the workspace, params.yaml and the environment's lock: `dvc repro` would rebuild "
              "this model")
        return 0
    print(f"DIFFERS from the current state ({len(problems)}):")
    for problem in problems:
        print(f"  - {problem}")
    print("`dvc repro` would build a different model (or a modified one is in place: `dvc checkout` restores "
          "dvc.lock's); to rebuild this one, `git checkout` the commit whose dvc.lock records the hashes above "
          "(`git log -p dvc.lock` shows them), then `dvc checkout` or `dvc repro`")
    return 1
