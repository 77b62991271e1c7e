"""The first from-scratch build of the tiny project, shared: test_pipeline continues from it, and the operations
and serving tests start from it. It follows docs/own-data.md word for word, as a new user would: a CSV export with
the columns question and answer, put under DVC, mapped in params.yaml with a system prompt of its own, checked by
`tailor check`, built by `dvc repro`."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from stage_runner import SECRET, follow_the_own_data_page, new_tiny_project, run, tiny_project

ADAPTER = "models/adapter/adapter_model.safetensors"


@dataclass
class Build:
    """A from-scratch `dvc repro`: where, its output, and its metrics and adapter bytes as it left them."""

    root: Path
    result: subprocess.CompletedProcess[str]
    metrics: dict[str, Any]
    adapter: bytes


@pytest.fixture(scope="session")
def first_build(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, prefect_api: str) -> Build:
    root = new_tiny_project(tmp_path_factory.mktemp("repo"), tiny_model_dir)
    follow_the_own_data_page(root)
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
