"""What every stage command shares: parse params.yaml first, and end user errors in one clear message."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from tasks.errors import UserError
from tasks.params import Params, load_params


class HideUserErrorTracebacks(logging.Filter):
    """Prefect logs every failed run with its traceback; for a UserError the message says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], UserError):
            record.exc_info = None
            record.exc_text = None
        return True


def run_stage(stage: Callable[[Params], object]) -> None:
    """Validate params.yaml, run the stage's flow, exit 2 with a one-line-per-problem message on user error."""
    # Prefect's console handler sits on the root logger; its run loggers propagate to it.
    for handler in logging.getLogger().handlers + logging.getLogger("prefect").handlers:
        handler.addFilter(HideUserErrorTracebacks())
    try:
        stage(load_params())
    except UserError as exc:
        print(f"\ntailor: {exc}", file=sys.stderr)
        sys.exit(2)
