"""What every stage command shares: read its paths from the command line (dvc.yaml declares them, nowhere else
does), parse params.yaml first, label the run with its stage, DVC experiment and git revision, and end user errors
in one clear message.

Every stage depends on this module: an edit here re-runs the whole pipeline.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from prefect import tags
from prefect.logging.loggers import flow_run_logger

from tasks.core.errors import UserError
from tasks.core.interrupts import stop_at_once
from tasks.core.params import Params, load_params

P = TypeVar("P")


class HideUserErrorTracebacks(logging.Filter):
    """Prefect logs every failed run with its traceback; for a UserError the message says it all (the Prefect UI
    keeps the message, without the traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], UserError):
            record.exc_info = None
            record.exc_text = None
        return True


def user_error_names() -> set[str]:
    """UserError and its subclasses, as Prefect's log lines name them."""
    found, pending = set(), [UserError]
    while pending:
        cls = pending.pop()
        found.add(cls.__name__)
        pending.extend(cls.__subclasses__())
    return found


class PrintUserErrorsOnce(logging.Filter):
    """On the terminal, Prefect repeats a failed run's exception four times (the task run and the flow run, each
    as a repr with escaped newlines, then as its final state); for a UserError the `tailor:` line printed at exit
    is the one clean copy, so those records are left out there."""

    def __init__(self) -> None:
        super().__init__()
        # Made when the stage starts, once every module (and so every UserError subclass) is imported.
        self.markers = [marker for name in sorted(user_error_names()) for marker in (f"{name}(", f"{name}: ")]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], UserError):
            return False
        message = record.getMessage()
        return not any(marker in message for marker in self.markers)


def git_revision() -> str:
    """The commit the pipeline ran from, with '-dirty' when tracked files had uncommitted changes.

    dvc.lock is left out: `dvc repro` itself rewrites it after each stage, so it is always "changed" mid-run.
    """
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)dvc.lock"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("-dirty" if dirty else "")


@dataclasses.dataclass(frozen=True)
class Target:
    """What a portfolio stage works on: one specialization, or one multi-task model (None: neither)."""

    specialization: str | None = None
    multitask: str | None = None


def run_labels(target: Target) -> list[str]:
    """Tags for the stage's Prefect run: stage name, DVC experiment (set by `dvc exp run`), git revision, and the
    specialization or multi-task model a portfolio stage works on."""
    main = sys.modules["__main__"].__spec__
    stage = main.name.rsplit(".", 1)[-1] if main else "unknown"
    return [f"stage:{stage}", f"experiment:{os.environ.get('DVC_EXP_NAME', 'workspace')}", f"git:{git_revision()}",
            *([f"specialization:{target.specialization}"] if target.specialization else []),
            *([f"multitask:{target.multitask}"] if target.multitask else [])]


def start_stage_run(flow: Any, flow_run: Any, state: Any) -> None:
    """on_running hook of every stage flow: the first log line says which stage, experiment and revision it is;
    and SIGINT/SIGTERM stop the stage at once from here on. Prefect installs its own SIGTERM handler as the run
    starts, which would report the end of the run to an API that a Ctrl-C may already have killed (a hang of
    minutes); this hook runs in the main thread after it, and replaces it (tasks/core/interrupts.py)."""
    stop_at_once()
    labels = dict(tag.split(":", 1) for tag in flow_run.tags if ":" in tag)
    target = labels.get("specialization") or labels.get("multitask")
    flow_run_logger(flow_run, flow).info("stage %s%s, DVC experiment %s, git revision %s", labels.get("stage"),
                                         f"@{target}" if target else "", labels.get("experiment"), labels.get("git"))


def stage_arguments(paths_type: type[P], argv: list[str] | None = None) -> tuple[P, Target]:
    """The stage's inputs and outputs from its command line, `--name path` for each field of the dataclass
    `paths_type`: dvc.yaml writes them into every stage's `cmd`, so they are declared once, next to its deps
    and outs; and `--specialization NAME` or `--multitask NAME` for a portfolio stage. A missing or unknown one exits 2 with argparse's
    usage line."""
    main = sys.modules["__main__"].__spec__
    parser = argparse.ArgumentParser(prog=f"python -m {main.name if main else 'flows.<stage>'}",
                                     description="A tailor stage; dvc.yaml gives these paths.")
    for field in dataclasses.fields(paths_type):  # type: ignore[arg-type]
        parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, type=Path, required=True)
    parser.add_argument("--specialization", help="a name under params.yaml's specializations")
    parser.add_argument("--multitask", help="a name under params.yaml's multitask")
    given = vars(parser.parse_args(argv))
    target = Target(given.pop("specialization"), given.pop("multitask"))
    return paths_type(**given), target


def run_stage(stage: Callable[[Params, P], object], paths_type: type[P]) -> None:
    """Read the paths, validate params.yaml, run the stage's flow; exit 2 with a one-line-per-problem message on
    user error."""
    paths, target = stage_arguments(paths_type)
    stop_at_once()  # SIGTERM like Ctrl-C; training replaces this with a stop at the next step boundary
    # Prefect's console handler sits on the root logger; its run loggers send to the API (the UI), then
    # propagate to the console.
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(HideUserErrorTracebacks())
    for handler in logging.getLogger().handlers:
        handler.addFilter(PrintUserErrorsOnce())
    try:
        params = load_params(specialization=target.specialization, multitask=target.multitask)
        with tags(*run_labels(target)):
            stage(params, paths)
    except UserError as exc:
        print(f"\ntailor: {exc}", file=sys.stderr)
        sys.exit(2)
