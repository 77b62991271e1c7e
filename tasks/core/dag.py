"""dvc.yaml (and the portfolio's stages) read from outside a stage (the deployment flow, the benchmarks): where a
stage's files are.

Stages themselves get their paths on their command line; this reads the same command lines, so nothing outside
dvc.yaml repeats a path.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from tasks.core.errors import UserError

PIPELINE = Path("dvc.yaml")  # your own specialization: what a plain `dvc repro` runs
PORTFOLIO = Path("portfolio/dvc.yaml")  # the portfolio, opt-in: written from PORTFOLIO_STAGES by `make portfolio`
# DVC reads every file named dvc.yaml in the repository, so a portfolio declared in one would show in a fresh
# clone's `dvc status` (its outputs, never built, as deleted). Declared here instead, it is one copy away.
PORTFOLIO_STAGES = Path("portfolio/stages.yaml")


def enable_portfolio(root: Path = Path()) -> None:
    """Write portfolio/dvc.yaml from portfolio/stages.yaml (as `make portfolio` does), so DVC sees the portfolio."""
    if not (root / PORTFOLIO_STAGES).is_file():
        raise UserError(f"{PORTFOLIO_STAGES} not found; run from the repository root, or restore it from git "
                        f"(`git checkout -- {PORTFOLIO_STAGES}`)")
    (root / PORTFOLIO).write_bytes((root / PORTFOLIO_STAGES).read_bytes())


def declaring_file(stage: str) -> Path:
    """The file that declares `stage`: dvc.yaml, or the portfolio's stages."""
    for stages_file in (PIPELINE, PORTFOLIO_STAGES):
        if not stages_file.is_file():
            raise UserError(f"{stages_file} not found; run from the repository root, where dvc.yaml lives")
        if stage in yaml.safe_load(stages_file.read_text(encoding="utf-8"))["stages"]:
            return stages_file
    raise UserError(f"no stage {stage} in {PIPELINE} or {PORTFOLIO_STAGES}; restore them from git (`git checkout "
                    f"-- {PIPELINE} {PORTFOLIO_STAGES}`)")


def dvc_target(stage: str, key: str | None = None) -> str:
    """The stage as `dvc repro`, `dvc exp run` and `dvc status` name it: a portfolio stage with its file."""
    name = stage if key is None else f"{stage}@{key}"
    return name if declaring_file(stage) == PIPELINE else f"{PORTFOLIO}:{name}"


def declared_paths(stage: str, key: str | None = None) -> dict[str, Path]:
    """The `--name path` arguments of the stage's command in its dvc.yaml, by name (dashes as underscores); for a
    portfolio stage (foreach), those of its run for `key`."""
    declared = yaml.safe_load(declaring_file(stage).read_text(encoding="utf-8"))["stages"][stage]
    command = declared["cmd"] if key is None else declared["do"]["cmd"].replace("${key}", key)
    options = shlex.split(command)[3:]  # after `python -m flows.<stage>`
    return {name.removeprefix("--").replace("-", "_"): Path(value) for name, value in zip(options[::2], options[1::2])}
