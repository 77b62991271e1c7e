"""Running the real pipeline commands in a temporary copy of the repository, against a local Prefect server on
127.0.0.1: shared by the benchmarks and the tests."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tasks.core.dag import PORTFOLIO

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def copy_repository(dest: Path) -> Path:
    """The repository's tracked and untracked-but-not-ignored files (no venv, no outputs) in a new git repo, as a
    fresh clone has them: without the copy of the portfolio's stages that `make portfolio` writes."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for name in set(files) - {str(PORTFOLIO)}:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@localhost",
                                                 "commit", "-qm", "copy"]):
        subprocess.run(["git", *args], cwd=dest, check=True)
    return dest


def environment(**extra: str) -> dict[str, str]:
    """This interpreter's environment first on PATH (so `python` and `dvc` are ours), plus `extra`."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **extra}


def stages_run(output: str) -> list[str]:
    """Stage names in the order `dvc repro` / `dvc exp run` ran them (a portfolio stage without its file's name)."""
    return re.findall(r"Running stage '(?:portfolio/dvc\.yaml:)?([\w@-]+)'", output)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (released just before the server binds it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(process: subprocess.Popen[Any], grace_seconds: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not exited within grace_seconds: a Prefect server or worker shutting
    down gracefully sometimes waits on the API far longer than a test can."""
    process.terminate()
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_prefect_server(home: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """Start a real Prefect server on 127.0.0.1, its SQLite database and log (server.log) under home; returns the
    process and its API URL at once, before it answers (wait_for_prefect_server waits)."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env={**env, "PREFECT_HOME": str(home), "PREFECT_SERVER_UI_ENABLED": "false",
             "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"},
        stdout=(home / "server.log").open("w"), stderr=subprocess.STDOUT)
    return server, f"http://127.0.0.1:{port}/api"


def wait_for_prefect_server(url: str, home: Path, server: subprocess.Popen[bytes] | None = None,
                            timeout_s: float = 90) -> None:
    """Return once the server at url answers; raise RuntimeError, with the end of its log, if it has not within
    timeout_s or its process (when given) has exited."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            return
        except OSError:
            if (server is not None and server.poll() is not None) or time.monotonic() > deadline:
                log = (home / "server.log").read_text()[-2000:]
                raise RuntimeError(f"the Prefect server did not start:\n{log}") from None
            time.sleep(0.5)


@contextmanager
def prefect_server(home: Path, env: dict[str, str]) -> Iterator[str]:
    """A real Prefect server on 127.0.0.1 (start_prefect_server) that answers; yields its API URL, stops it on
    exit."""
    server, url = start_prefect_server(home, env)
    try:
        wait_for_prefect_server(url, home, server)
        yield url
    finally:
        stop(server)
