"""The GPU training benchmark runs end to end: reduced on the CPU here, full size where CUDA is present."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def run_benchmark(out: Path, *options: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_train", "--out", str(out), *options], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "tokens_per_second" in done.stdout  # the table is printed
    return json.loads(out.read_text(encoding="utf-8"))


def test_tiny_run_on_cpu_reports_throughput_and_no_mfu(tmp_path: Path) -> None:
    result = run_benchmark(tmp_path / "tiny.json", "--tiny", "--steps", "4")
    assert math.isfinite(result["tokens_per_second"]) and result["tokens_per_second"] > 0
    assert len(result["losses"]) == 4 + result["warmup_steps"]
    assert all(math.isfinite(loss) for loss in result["losses"])
    # Random weights on random ids start near ln(vocab); far from it, the loss is not the LM loss.
    assert abs(result["losses"][0] - math.log(result["size"]["vocab_size"])) < 1.0
    assert 0 < result["trainable_parameters"] < result["parameters"]  # LoRA: most weights frozen
    size = result["size"]
    # 4·N + 2·N_trainable + 12·layers·hidden·context, N without the input embedding lookup (tasks/train/flops.py).
    matmul = result["parameters"] - size["vocab_size"] * size["hidden_size"]
    attention = 12 * size["num_hidden_layers"] * size["hidden_size"] * result["seq_len"]
    assert result["flops_per_token"] == 4 * matmul + 2 * result["trainable_parameters"] + attention
    if not torch.cuda.is_available():
        assert result["mfu"] is None and result["peak_memory_gib"] is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_full_size_run_on_gpu(tmp_path: Path) -> None:
    result = run_benchmark(tmp_path / "gpu.json", "--steps", "3", "--warmup-steps", "1")
    assert result["parameters"] > 1e9 and result["dtype"] == "bf16"
    assert result["tokens_per_second"] > 0 and result["peak_memory_gib"] > 2
    assert all(math.isfinite(loss) for loss in result["losses"])
    if result["mfu"] is not None:  # None on a GPU missing from tasks/train/flops.py's table
        assert 0 < result["mfu"] < 1
