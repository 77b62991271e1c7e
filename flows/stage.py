"""What every stage command shares: parse params.yaml first, label the run with its stage, DVC experiment
and git revision, and end user errors in one clear message."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from prefect import tags
from prefect.logging.loggers import flow_run_logger

from tasks.errors import UserError
from tasks.params import Params, load_params


class HideUserErrorTracebacks(logging.Filter):
    """Prefect logs every failed run with its traceback; for a UserError the message says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], UserError):
            record.exc_info = None
            record.exc_text = None
        return True


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


def run_labels() -> list[str]:
    """Tags for the stage's Prefect run: stage name, DVC experiment (set by `dvc exp run`), git revision."""
    main = sys.modules["__main__"].__spec__
    stage = main.name.rsplit(".", 1)[-1] if main else "unknown"
    return [f"stage:{stage}", f"experiment:{os.environ.get('DVC_EXP_NAME', 'workspace')}", f"git:{git_revision()}"]


def log_run_labels(flow: Any, flow_run: Any, state: Any) -> None:
    """on_running hook: the first log line of every stage run says which stage, experiment and revision it is."""
    labels = dict(tag.split(":", 1) for tag in flow_run.tags if ":" in tag)
    flow_run_logger(flow_run, flow).info("stage %s, DVC experiment %s, git revision %s", labels.get("stage"),
                                         labels.get("experiment"), labels.get("git"))


def run_stage(stage: Callable[[Params], object]) -> None:
    """Validate params.yaml, run the stage's flow, exit 2 with a one-line-per-problem message on user error."""
    # Prefect's console handler sits on the root logger; its run loggers propagate to it.
    for handler in logging.getLogger().handlers + logging.getLogger("prefect").handlers:
        handler.addFilter(HideUserErrorTracebacks())
    try:
        params = load_params()
        with tags(*run_labels()):
            stage(params)
    except UserError as exc:
        print(f"\ntailor: {exc}", file=sys.stderr)
        sys.exit(2)
