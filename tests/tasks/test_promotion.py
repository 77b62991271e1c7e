"""Promotion gates and publishing: a failing candidate changes nothing; a swap is all or nothing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tasks.atomic_dir import restore_interrupted, write_dir_atomically
from tasks.params import PromoteParams
from tasks.promotion import decision_record, promotion_gates, publish_production, relative_improvement

METRICS = {"base": {"loss": 3.0, "perplexity": 20.0, "rouge_l": 0.20},
           "finetuned": {"loss": 2.5, "perplexity": 12.0, "rouge_l": 0.30}}


def test_relative_improvement_respects_metric_direction() -> None:
    assert relative_improvement("rouge_l", 0.20, 0.30) == pytest.approx(0.5)
    assert relative_improvement("perplexity", 20.0, 12.0) == pytest.approx(0.4)
    assert relative_improvement("perplexity", 12.0, 20.0) < 0


@pytest.mark.parametrize(("params", "promoted"), [
    (PromoteParams(metric="rouge_l", min_relative_improvement=0.4), True),
    (PromoteParams(metric="rouge_l", min_relative_improvement=0.6), False),
    (PromoteParams(metric="perplexity", min_relative_improvement=0.39), True),
    (PromoteParams(metric="perplexity", min_relative_improvement=0.41), False),
])
def test_gate_threshold(params: PromoteParams, promoted: bool) -> None:
    decision = decision_record(promotion_gates(METRICS, params), params.metric)
    assert decision["promoted"] is promoted
    gate = decision["gates"][-1]
    assert gate["name"] == f"{params.metric}_vs_base" and gate["threshold"] == params.min_relative_improvement
    if not promoted:
        assert decision["reason"] == f"failed: {params.metric}_vs_base; production left unchanged"


def test_nan_metric_blocks_promotion() -> None:
    broken = {**METRICS, "finetuned": {**METRICS["finetuned"], "loss": math.nan}}
    decision = decision_record(promotion_gates(broken, PromoteParams()), "rouge_l")
    assert not decision["promoted"] and "finite_metrics" in decision["reason"]


def test_rouge_gate_on_text_data_explains_itself() -> None:
    text_metrics = {k: {m: v for m, v in d.items() if m != "rouge_l"} for k, d in METRICS.items()}
    decision = decision_record(promotion_gates(text_metrics, PromoteParams()), "rouge_l")
    assert not decision["promoted"] and "choose promote.metric perplexity" in decision["gates"][-1]["detail"]


def test_publish_writes_card_lineage_and_tokenizer(tmp_path: Path, tiny_model_dir: Path) -> None:
    candidate = tmp_path / "adapter"
    candidate.mkdir()
    (candidate / "adapter_model.safetensors").write_bytes(b"weights")
    lineage = {"git_revision": "abc", "metrics": METRICS, "inputs": {}, "params": {}}
    gates = promotion_gates(METRICS, PromoteParams())
    out = publish_production.fn(candidate, tiny_model_dir, tmp_path / "production", lineage, gates, False)
    assert (out / "adapter_model.safetensors").read_bytes() == b"weights"
    assert (out / "tokenizer.json").is_file()
    assert json.loads((out / "lineage.json").read_text())["git_revision"] == "abc"
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft") and "| rouge_l | 0.2 | 0.3 |" in card


def test_failed_write_leaves_the_old_version(tmp_path: Path) -> None:
    target = tmp_path / "production"
    write_dir_atomically(target, lambda d: (d.mkdir(), (d / "model").write_text("v1")))

    def crash(staging: Path) -> None:
        staging.mkdir()
        (staging / "model").write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_dir_atomically(target, crash)
    assert (target / "model").read_text() == "v1"
    write_dir_atomically(target, lambda d: (d.mkdir(), (d / "model").write_text("v2")))
    assert (target / "model").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["production"]


def test_swap_cut_between_renames_is_restored(tmp_path: Path) -> None:
    target = tmp_path / "production"
    old = tmp_path / "production.old"
    old.mkdir()
    (old / "model").write_text("v1")
    restore_interrupted(target)
    assert (target / "model").read_text() == "v1" and not old.exists()
