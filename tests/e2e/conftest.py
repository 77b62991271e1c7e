"""The first from-scratch build of the tiny project, shared: test_pipeline continues from it, and the operations
and serving tests start from it. It follows docs/own-data.md word for word, as a new user would: a CSV export with
the columns question and answer, put under DVC, mapped in params.yaml with a system prompt of its own, checked by
`tailor check`, built by `dvc repro`."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from judge_stand_in import stand_in_judge
from stage_runner import SECRET, follow_the_own_data_page, new_tiny_project, run, set_params, tiny_project

ADAPTER = "models/adapter/adapter_model.safetensors"


@dataclass
class Build:
    """A from-scratch `dvc repro`: where, its output, and its metrics and adapter bytes as it left them."""

    root: Path
    result: subprocess.CompletedProcess[str]
    metrics: dict[str, Any]
    adapter: bytes


@pytest.fixture(scope="session")
def judge_url() -> Iterator[str]:
    """A stand-in LLM judge on 127.0.0.1 for the whole session (the tests that re-run evaluate call it too), which
    answers only requests carrying the key, SECRET, that every stage finds in JUDGE_KEY."""
    os.environ["JUDGE_KEY"] = SECRET
    try:
        with stand_in_judge(key=SECRET) as url:
            yield url
    finally:
        del os.environ["JUDGE_KEY"]


@pytest.fixture(scope="session")
def first_build(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, prefect_api: str,
                judge_url: str) -> Build:
    root = new_tiny_project(tmp_path_factory.mktemp("repo"), tiny_model_dir)
    follow_the_own_data_page(root)
    set_params(root, "evaluate", judge={"url": judge_url, "model": "stand-in", "api_key_env": "JUDGE_KEY"})
    set_params(root, "baselines", retriever="minilm")  # the shipped retriever: this build is the one that runs it
    result = run(root, "dvc", "repro", HF_TOKEN=SECRET)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return Build(root, result, json.loads((root / "reports/metrics.json").read_text()), (root / ADAPTER).read_bytes())


@pytest.fixture(scope="session")
def tokenized_project(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, prefect_api: str) -> Path:
    """The tiny project (400 train rows) run up to tokenize, for the tests that run finetune on its own; each
    sets the finetune params it needs."""
    root = tiny_project(tmp_path_factory.mktemp("training"), tiny_model_dir, 400, 16)
    prepared = run(root, "dvc", "repro", "tokenize")
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    return root
