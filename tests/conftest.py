"""Shared fixtures: a tiny Llama built from a config with a tokenizer trained offline, and a real Prefect server."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bare_model import build_chat_model

from benchmarks.harness import prefect_server, start_prefect_server, stop, wait_for_prefect_server

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"
# `make test` and `make test-long` run three pytest workers. Each module runs whole on one worker (its module
# fixtures are built once), and the modules that share a session build run together on one worker, in file order,
# so it is built once too.
SHARED_BUILDS = {
    "tests/e2e/test_operations.py": "first_build", "tests/e2e/test_pipeline.py": "first_build",
    "tests/e2e/test_serve.py": "first_build",
    "tests/e2e/test_distributed.py": "tokenized_project", "tests/e2e/test_resume.py": "tokenized_project",
}
# The work units in the order the workers take them: the longest first (benchmarks/RESULTS.md has their durations),
# so that the workers finish at about the same time.
HEAVY_FIRST = ("first_build", "tests/e2e/test_sweep.py", "tests/e2e/test_portfolio.py",
               "tests/flows/test_validate_corpus.py", "tests/e2e/test_tools.py", "tests/e2e/test_grpo.py",
               "tokenized_project", "tests/e2e/test_preference.py", "tests/flows/test_base_model.py",
               "tests/flows/test_base_model_sources.py", "tests/e2e/", "tests/flows/", "tests/benchmarks/")


# pytest-xdist's documented `--dist loadgroup` does not group here (pytest 9.2, pytest-xdist 3.8.0: its workers never
# add the group to a test's id, so every test is its own unit), so this scheduler overrides LoadScopeScheduling's
# private methods instead; the locks pin pytest-xdist, and tests/test_structure.py fails loudly if they change.
@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # xdist would order the units by test count, not by HEAVY_FIRST

    class SharedBuildScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return SHARED_BUILDS.get(module, module)

        def _reschedule(self, node: Any) -> None:
            # xdist hands a worker its next unit when 2 of its tests are left; our units are a few long tests, so
            # that would tie a long unit to a busy worker while the other runs dry. Hand it over at the last test.
            if self.workqueue and self._pending_of(self.assigned_work[node]) > 1:
                return
            super()._reschedule(node)

    return SharedBuildScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The work units in HEAVY_FIRST's order (stable: each module keeps its order)."""
    def rank(item: pytest.Item) -> int:
        unit = SHARED_BUILDS.get(item.nodeid.split("::", 1)[0], item.nodeid)
        return next((i for i, prefix in enumerate(HEAVY_FIRST) if unit.startswith(prefix)), len(HEAVY_FIRST))

    items.sort(key=rank)


def demo_rows(split: str, limit: int) -> list[dict[str, str]]:
    lines = (DEMO / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[:limit]
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with a 600-token BPE vocabulary trained here on the demo text: no downloads."""
    texts = [r["prompt"] + " " + r["response"] for r in demo_rows("train", 2000)]
    return build_chat_model(tmp_path_factory.mktemp("tiny-llama"), texts)


# Under xdist the controller starts one Prefect server for all its workers, which find it through these variables
# (they inherit its environment): a server per worker would cost each about 17 s of CPU to start and 2 s a minute
# while it runs, on a machine whose two cores the tests already fill.
SHARED_API, SHARED_HOME = "TAILOR_TESTS_PREFECT_API", "TAILOR_TESTS_PREFECT_HOME"
SHARED_SERVER = pytest.StashKey[tuple[subprocess.Popen[bytes], Path]]()  # the controller's server process and home


# The server's background services that no test uses (schedules firing, late runs, work-pool health, automations,
# pauses, database vacuum) are off: each polls the database all session, and they cost a few percent of a core
# that the tests need. What the UI shows of a run (task runs, events) and cancellation stay on.
UNUSED_SERVICES = ("SCHEDULER", "LATE_RUNS", "FOREMAN", "REPOSSESSOR", "TRIGGERS", "PAUSE_EXPIRATIONS")


def server_environment() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"},
            **{f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false" for name in UNUSED_SERVICES},
            "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "[]"}


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("numprocesses", None) and not hasattr(config, "workerinput"):
        home = Path(tempfile.mkdtemp(prefix="tailor-tests-prefect-"))
        server, url = start_prefect_server(home, server_environment())  # it starts while the workers collect
        config.stash[SHARED_SERVER] = server, home
        os.environ[SHARED_API], os.environ[SHARED_HOME] = url, str(home)


def pytest_unconfigure(config: pytest.Config) -> None:
    if SHARED_SERVER in config.stash:
        server, home = config.stash[SHARED_SERVER]
        stop(server)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prefect server on 127.0.0.1 (SQLite in a temp dir): the controller's under xdist, else one for this
    session. Stage subprocesses use it via PREFECT_API_URL, which saves each the 10-15 s of starting a temporary
    one."""
    with contextlib.ExitStack() as stack:
        if SHARED_API in os.environ:
            url = os.environ[SHARED_API]
            wait_for_prefect_server(url, Path(os.environ[SHARED_HOME]))
        else:
            url = stack.enter_context(prefect_server(tmp_path_factory.mktemp("prefect-home"), server_environment()))
        patch = stack.enter_context(pytest.MonkeyPatch.context())
        patch.setenv("PREFECT_API_URL", url)  # restored after the session
        yield url
