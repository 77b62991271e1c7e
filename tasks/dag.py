"""dvc.yaml (and portfolio/dvc.yaml) read from outside a stage (the deployment flow, the benchmarks): where a stage's files are.

Stages themselves get their paths on their command line; this reads the same command lines, so nothing outside
dvc.yaml repeats a path.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from tasks.errors import UserError

PIPELINE = Path("dvc.yaml")  # your own specialization: what a plain `dvc repro` runs
PORTFOLIO = Path("portfolio/dvc.yaml")  # the portfolio, opt-in: `make portfolio`


def dvc_file_of(stage: str) -> Path:
    """The dvc.yaml that declares `stage`."""
    for dvc_file in (PIPELINE, PORTFOLIO):
        if not dvc_file.is_file():
            raise UserError(f"{dvc_file} not found; run from the repository root, where dvc.yaml lives")
        if stage in yaml.safe_load(dvc_file.read_text(encoding="utf-8"))["stages"]:
            return dvc_file
    raise UserError(f"no stage {stage} in {PIPELINE} or {PORTFOLIO}; restore them from git (`git checkout -- "
                    f"{PIPELINE} {PORTFOLIO}`)")


def dvc_target(stage: str, key: str | None = None) -> str:
    """The stage as `dvc repro`, `dvc exp run` and `dvc status` name it: a portfolio stage with its file."""
    name = stage if key is None else f"{stage}@{key}"
    return name if dvc_file_of(stage) == PIPELINE else f"{PORTFOLIO}:{name}"


def declared_paths(stage: str, key: str | None = None) -> dict[str, Path]:
    """The `--name path` arguments of the stage's command in its dvc.yaml, by name (dashes as underscores); for a
    portfolio stage (foreach), those of its run for `key`."""
    declared = yaml.safe_load(dvc_file_of(stage).read_text(encoding="utf-8"))["stages"][stage]
    command = declared["cmd"] if key is None else declared["do"]["cmd"].replace("${key}", key)
    options = shlex.split(command)[3:]  # after `python -m flows.<stage>`
    return {name.removeprefix("--").replace("-", "_"): Path(value) for name, value in zip(options[::2], options[1::2])}
