"""dvc.yaml read from outside a stage (the deployment flow, the benchmarks): where a stage's files are.

Stages themselves get their paths on their command line; this reads the same command lines, so nothing outside
dvc.yaml repeats a path.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from tasks.errors import UserError

DVC_FILE = Path("dvc.yaml")


def declared_paths(stage: str, key: str | None = None, dvc_file: Path = DVC_FILE) -> dict[str, Path]:
    """The `--name path` arguments of the stage's command in dvc.yaml, by name (dashes as underscores); for a
    portfolio stage (foreach), those of its run for `key`."""
    if not dvc_file.is_file():
        raise UserError(f"{dvc_file} not found; run from the repository root, where dvc.yaml lives")
    declared = yaml.safe_load(dvc_file.read_text(encoding="utf-8"))["stages"][stage]
    command = declared["cmd"] if key is None else declared["do"]["cmd"].replace("${key}", key)
    options = shlex.split(command)[3:]  # after `python -m flows.<stage>`
    return {name.removeprefix("--").replace("-", "_"): Path(value) for name, value in zip(options[::2], options[1::2])}
