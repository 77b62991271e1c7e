"""The retry rule for tasks that touch files or the network: retry what may pass on a second try, nothing else."""

from __future__ import annotations

import subprocess
from typing import Any

from prefect.cache_policies import NO_CACHE

from tasks.core.errors import UserError


def retry_on_transient_error(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry I/O and network failures, which may pass on a second try; never a UserError
    (bad data or params stay bad) or any other exception (a bug stays a bug)."""
    try:
        state.result()
    except UserError:
        return False
    except (OSError, subprocess.CalledProcessError):  # OSError covers disk, network and requests' errors
        return True
    except Exception:
        return False
    return False


# Options for tasks that read or write files or the network: a couple of retries on transient errors. Prefect's
# result caching stays off for all stage work, so DVC alone decides what is stale.
TRANSIENT_RETRIES: dict[str, Any] = {"retries": 2, "retry_delay_seconds": 5,
                                     "retry_condition_fn": retry_on_transient_error, "cache_policy": NO_CACHE}
