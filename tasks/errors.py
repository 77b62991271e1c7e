"""The error type for problems a user can fix (bad data, bad params, missing files), and the retry rule it implies."""

from __future__ import annotations

from typing import Any


class UserError(Exception):
    """Raised with a message that names the problem and how to fix it; stages print it without a traceback."""


def retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry transient failures (network, I/O), never a UserError, which stays wrong."""
    try:
        state.result()
    except UserError:
        return False
    except Exception:
        return True
    return False
