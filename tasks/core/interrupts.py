"""Stopping when asked: SIGINT (Ctrl-C) and SIGTERM (`kill`, a Prefect cancellation) end a stage within seconds,
with one line, no traceback, no process left behind, and never in the middle of writing an output.

Most stages stop at once: their outputs are swapped in whole (tasks/core/atomic_dir.py), so stopping anywhere loses
only the work in progress. Training instead finishes the step it is on and stops before beginning a checkpoint,
so the last complete checkpoint is where `dvc repro` resumes.

The stage then exits without Prefect's usual end-of-run reporting: a terminal's Ctrl-C also kills the stage's
temporary Prefect server, and reporting to a server that is gone would hang the stage for minutes. The run is
marked Cancelled on the server when it answers within a few seconds; otherwise one warning says so.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, NoReturn

import psutil

STOP_REQUESTED = threading.Event()  # set by the first SIGINT/SIGTERM once stop_at_step_boundary is in force
SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_CODE = 130  # what a shell reports for a command ended by Ctrl-C
REPORT_SECONDS = 5
# The command that runs this stage again: a portfolio stage (given its specialization or multi-task model on the
# command line, as portfolio/dvc.yaml does) is not part of a plain `dvc repro`.
RERUN = ("`dvc repro portfolio/dvc.yaml`" if {"--specialization", "--multitask"} & set(sys.argv)
         else "`dvc repro`")
AT_ONCE = f"interrupted; this stage's outputs were not changed, {RERUN} runs it again"


class Interrupted(Exception):
    """Training stopped on SIGINT/SIGTERM at a step boundary; the message says where `dvc repro` resumes."""


def mark_run_cancelled(message: str) -> bool:
    """Tell the Prefect server this stage's flow run was cancelled; False if it does not answer in time."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext
    from prefect.states import Cancelled

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return True
    flow_run_id = context.flow_run.id
    reported = threading.Event()

    def report() -> None:
        try:
            with get_client(sync_client=True, httpx_settings={"timeout": REPORT_SECONDS}) as client:
                client.set_flow_run_state(flow_run_id, Cancelled(message=message), force=True)
            reported.set()
        except Exception:  # any failure to report means the same: the server did not hear it
            pass

    threading.Thread(target=report, daemon=True).start()
    return reported.wait(REPORT_SECONDS)


def exit_interrupted(message: str) -> NoReturn:
    """Print the one line, report the run as cancelled if the server answers, stop this process's children
    (a temporary Prefect server, torchrun), and exit at once."""
    print(f"\ntailor: {message}", file=sys.stderr, flush=True)
    if not mark_run_cancelled(message):
        print("tailor: warning: the Prefect API did not answer; this stage's run may still show as running there",
              file=sys.stderr, flush=True)
    stop_children()
    os._exit(EXIT_CODE)


def stop_children(grace_seconds: float = 5) -> None:
    """End every process this one started, and theirs: SIGTERM first, so they can clean up, then SIGKILL for any
    still alive after the grace; a grace of 0 kills them at once."""
    children = psutil.Process().children(recursive=True)
    if grace_seconds > 0:
        for child in children:
            child.terminate()
        _, children = psutil.wait_procs(children, timeout=grace_seconds)
    for child in children:
        child.kill()
    psutil.wait_procs(children, timeout=5)


def exit_when_interrupted(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a training step so that its Interrupted ends the stage at once (before Prefect handles it)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Interrupted as exc:
            exit_interrupted(str(exc))

    return wrapper


def stop_at_once() -> None:
    """SIGINT and SIGTERM end the stage where it is."""
    for signum in SIGNALS:
        signal.signal(signum, lambda signum, frame: exit_interrupted(AT_ONCE))


def request_stop(signum: int, frame: FrameType | None) -> None:
    """The first signal asks training to stop at the next step boundary; a second one stops at once."""
    if STOP_REQUESTED.is_set():
        exit_interrupted(f"interrupted again: stopped at once; {RERUN} resumes from the last complete checkpoint")
    STOP_REQUESTED.set()


def stop_at_step_boundary() -> None:
    """From now on SIGINT and SIGTERM set STOP_REQUESTED instead of interrupting (training polls it each step)."""
    for signum in SIGNALS:
        signal.signal(signum, request_stop)
