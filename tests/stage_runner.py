"""Running the real pipeline commands (dvc, stage modules) in a temporary copy of the repository."""

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

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def copy_repository(dest: Path) -> Path:
    """The repository's tracked and untracked-but-not-ignored files (no venv, no outputs) in a new git repo."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for name in files:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@localhost",
                                                 "commit", "-qm", "copy"]):
        subprocess.run(["git", *args], cwd=dest, check=True)
    return dest


def tiny_project(dest: Path, model_dir: Path, train_rows: int, eval_rows: int,
                 **sections: dict[str, Any]) -> Path:
    """A copy of the repository on the first rows of the demo data, with model_dir as the base model and each
    given params section updated; committed, so DVC experiments can start from it."""
    root = copy_repository(dest)
    for split, rows in (("train", train_rows), ("eval", eval_rows)):
        path = root / "data" / "demo" / f"{split}.jsonl"
        path.write_text("".join(path.read_text(encoding="utf-8").splitlines(keepends=True)[:rows]), encoding="utf-8")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["base_model"] = {"source": "local", "path": str(model_dir)}
    for section, updates in sections.items():
        params[section].update(updates)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(root, "git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qam", "tiny setup")
    return root


SECRET = "hf_NotARealTokenButSecret123"  # set as HF_TOKEN for the build; must appear in no output
# The tiny model learns the demo's style fast; what forgetting it shows on general text is not the point here.
TINY_PARAMS: dict[str, dict[str, Any]] = {
    "finetune": {"max_steps": 8, "save_steps": 4, "learning_rate": 0.02, "logging_steps": 2},
    "evaluate": {"max_examples": 16, "max_new_tokens": 8, "bootstrap_samples": 200, "forgetting_max_chunks": 8},
    "baselines": {"few_shot_k": 2, "retrieval_k": 2},
    "promote": {"metric": "perplexity", "min_relative_improvement": 0.01, "max_forgetting": 10.0},
}


def new_tiny_project(dest: Path, model_dir: Path, **changes: dict[str, Any]) -> Path:
    """The tiny project (240 train and 24 eval rows, TINY_PARAMS), with `changes` merged into its params."""
    sections = {name: {**values, **changes.get(name, {})} for name, values in TINY_PARAMS.items()}
    return tiny_project(dest, model_dir, 240, 24, **sections)


def set_params(root: Path, section: str, **settings: Any) -> None:
    """Update one section of root's params.yaml."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    params[section].update(settings)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def environment(**extra: str) -> dict[str, str]:
    """This interpreter's environment first on PATH (so `python` and `dvc` are ours), plus `extra`."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **extra}


def run(root: Path, *command: str, timeout: int = 900, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """Run a command in root and wait for it."""
    return subprocess.run(list(command), cwd=root, env=environment(**extra_env), capture_output=True, text=True,
                          timeout=timeout)


def stages_run(output: str) -> list[str]:
    """Stage names in the order `dvc repro` / `dvc exp run` ran them."""
    return re.findall(r"Running stage '([\w-]+)'", output)


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


@contextmanager
def prefect_server(home: Path, env: dict[str, str]) -> Iterator[str]:
    """A real Prefect server on 127.0.0.1, its SQLite database and log under home; yields its API URL, stops it
    on exit. Raises RuntimeError, with the end of its log, if it does not answer within 90 s."""
    home.mkdir(parents=True, exist_ok=True)
    log = home / "server.log"
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env={**env, "PREFECT_HOME": str(home), "PREFECT_SERVER_UI_ENABLED": "false",
             "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"},
        stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the Prefect server did not start:\n{log.read_text()[-2000:]}") from None
                time.sleep(0.5)
        yield url
    finally:
        stop(server)
