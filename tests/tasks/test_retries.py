"""Tasks that touch files or the network retry transient failures, and never a UserError or a bug."""

from __future__ import annotations

import contextlib

import pytest
from prefect import flow, task
from prefect.settings import PREFECT_API_URL, temporary_settings

from tasks.core.errors import UserError
from tasks.core.retries import TRANSIENT_RETRIES


def attempts_until_done(error: Exception) -> int:
    """Run a task that fails once with `error`, then succeeds; how many attempts Prefect made."""
    calls: list[int] = []

    @task(**{**TRANSIENT_RETRIES, "retry_delay_seconds": 0})
    def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise error

    @flow
    def run() -> None:
        flaky()

    with contextlib.suppress(Exception):
        run()
    return len(calls)


@pytest.fixture(autouse=True)
def server(prefect_api: str):
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        yield


def test_io_and_subprocess_failures_are_retried() -> None:
    assert attempts_until_done(OSError("NFS hiccup")) == 2
    assert attempts_until_done(ConnectionResetError("peer reset")) == 2


def test_user_errors_and_bugs_are_not_retried() -> None:
    assert attempts_until_done(UserError("column prompt is missing")) == 1
    assert attempts_until_done(KeyError("a bug")) == 1
