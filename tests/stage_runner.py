"""The tiny project the end-to-end tests run: a copy of the repository with a tiny base model and small params."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from benchmarks.harness import copy_repository, environment


def tiny_project(dest: Path, model_dir: Path, train_rows: int, eval_rows: int,
                 **sections: dict[str, Any]) -> Path:
    """A copy of the repository on the first rows of the demo data, with model_dir as the base model, no
    specializations, and each given params section updated; committed, so DVC experiments can start from it."""
    root = copy_repository(dest)
    for split, rows in (("train", train_rows), ("eval", eval_rows)):
        path = root / "data" / "demo" / f"{split}.jsonl"
        path.write_text("".join(path.read_text(encoding="utf-8").splitlines(keepends=True)[:rows]), encoding="utf-8")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["base_model"] = {"source": "local", "path": str(model_dir)}
    params["specializations"], params["multitask"] = {}, {}  # the demo portfolio only where a test sets one
    for section, updates in sections.items():
        params[section].update(updates)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(root, "git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qam", "tiny setup")
    return root


SECRET = "hf_NotARealTokenButSecret123"  # set as HF_TOKEN for the build; must appear in no output
# The tiny model learns the demo's style fast; what forgetting it shows on general text is not the point here.
# BM25 retrieval: importing sentence-transformers for MiniLM costs ~5 s of CPU in each stage that retrieves; it runs in the first
# build (tests/e2e/conftest.py), with the shipped params.
TINY_PARAMS: dict[str, dict[str, Any]] = {
    "finetune": {"max_steps": 8, "save_steps": 4, "learning_rate": 0.02, "logging_steps": 2},
    "evaluate": {"max_examples": 16, "max_new_tokens": 8, "bootstrap_samples": 200, "forgetting_max_chunks": 8},
    "baselines": {"few_shot_k": 2, "retrieval_k": 2, "retriever": "bm25"},
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


def use_raw_data(root: Path, train: str, evaluation: str, **data: Any) -> None:
    """Write a user's train and eval files (JSON Lines) under root's data/raw/ and point params.yaml's data
    section at them, with these other data settings (format, columns, ...)."""
    raw = root / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "train.jsonl").write_text(train, encoding="utf-8")
    (raw / "eval.jsonl").write_text(evaluation, encoding="utf-8")
    set_params(root, "data", train="data/raw/train.jsonl", eval="data/raw/eval.jsonl", **data)


def stage_command(root: Path, stage: str) -> list[str]:
    """The stage's command as root's dvc.yaml declares it (with its paths), to run one stage by hand."""
    return shlex.split(yaml.safe_load((root / "dvc.yaml").read_text())["stages"][stage]["cmd"])


def pipeline_stages(root: Path) -> list[str]:
    """The stages of the top-level specialization: every stage of dvc.yaml but the portfolio's (foreach) ones."""
    return [name for name, stage in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].items()
            if "foreach" not in stage]


def run(root: Path, *command: str, timeout: int = 900, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """Run a command in root and wait for it."""
    return subprocess.run(list(command), cwd=root, env=environment(**extra_env), capture_output=True, text=True,
                          timeout=timeout)


TRAIN, EVAL = "data/raw/my_train.csv", "data/raw/my_eval.csv"


def follow_the_own_data_page(root: Path) -> None:
    """docs/own-data.md steps 1, 2 and 5 (up to `dvc repro`), on the tiny project's rows written as a user's CSV."""
    (root / "data/raw").mkdir(parents=True)
    for split, path in (("train", TRAIN), ("eval", EVAL)):
        rows = pd.read_json(root / f"data/demo/{split}.jsonl", lines=True)
        rows.rename(columns={"prompt": "question", "response": "answer"}).to_csv(root / path, index=False)
    git = ("git", "-c", "user.name=t", "-c", "user.email=t@localhost")
    for step in (("dvc", "add", TRAIN, EVAL), (*git, "add", "data/raw"), (*git, "commit", "-qm", "Add my data")):
        assert run(root, *step).returncode == 0, step
    set_params(root, "data", format="instruction", train=TRAIN, eval=EVAL,
               columns={"prompt": "question", "response": "answer"})
    set_params(root, "baselines", system_prompt="Say what the Python callable does, in one sentence.")
    checked = run(root, "tailor", "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr


# The finetune stage trained again from scratch: --force, since its inputs are those dvc.lock records and a plain
# `dvc repro` would check the last adapter out of the cache instead of training.
FINETUNE_AGAIN = ("dvc", "repro", "--force", "--single-item", "--no-run-cache", "finetune")


def ctrl_c_training(root: Path, checkpoint: str,
                    env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str, str, float]:
    """Train again (FINETUNE_AGAIN, in a session of its own) and press Ctrl-C once `checkpoint` is complete: SIGINT
    to its process group, as a terminal sends it. Once it stopped as interrupted (a non-zero exit, tailor's message,
    no traceback), returns the process, its stdout and stderr, and the seconds it took to stop."""
    training = subprocess.Popen(FINETUNE_AGAIN, cwd=root, env=env or environment(), start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(root / "models" / "checkpoints" / checkpoint / "tailor-complete")
    sent = time.monotonic()
    os.killpg(training.pid, signal.SIGINT)
    stdout, stderr = training.communicate(timeout=120)
    stopped = time.monotonic() - sent
    assert training.returncode != 0 and "tailor: interrupted at step" in stderr, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return training, stdout, stderr, stopped


def wait_for(path: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
