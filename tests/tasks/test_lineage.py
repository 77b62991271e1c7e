from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from tasks.release.lineage import (
    compute,
    compute_note,
    environment_differences,
    environment_lock,
    file_digests,
    model_inputs,
    status_targets,
    tampering,
)


def entry(path: str, md5: str) -> dict[str, str]:
    return {"path": path, "md5": md5}


def test_model_inputs_follow_the_dag_back_from_the_model_with_its_code_and_leave_reports_out(tmp_path: Path) -> None:
    lock = tmp_path / "dvc.lock"
    lock.write_text(yaml.safe_dump({"stages": {
        "validate": {"deps": [entry("tasks/data/validation.py", "c1"), entry("data/raw.jsonl", "raw")],
                     "outs": [entry("data/validated", "val"), entry("reports/data_docs", "docs")]},
        "tokenize": {"deps": [entry("data/validated", "stale"), entry("models/base", "base")],
                     "outs": [entry("data/tokenized", "tok")]},
        "base_model": {"deps": [entry("chat_templates", "tpl")], "outs": [entry("models/base", "base")]},
        "finetune": {"deps": [entry("data/tokenized/train", "train"), entry("models/base", "base")],
                     "outs": [entry("models/adapter", "adapter"), entry("reports/training.json", "timing")]},
        "evaluate": {"deps": [entry("models/adapter", "adapter")], "outs": [entry("reports/metrics.json", "m")]},
    }}))
    inputs = model_inputs([Path("models/adapter"), Path("models/base")], [lock])
    assert inputs == {"chat_templates": "tpl", "data/raw.jsonl": "raw", "tasks/data/validation.py": "c1", "data/tokenized": "tok",
                      "data/tokenized/train": "train", "data/validated": "val", "models/adapter": "adapter",
                      "models/base": "base"}
    assert model_inputs([Path("models/adapter")], [tmp_path / "missing.lock"]) == {}


def test_environment_lock_is_read_from_the_install_marker_and_differences_are_named(tmp_path: Path) -> None:
    lock = tmp_path / "cpu.txt"
    lock.write_text("torch==2.13.0\n")
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    marker = tmp_path / "tailor-lock"
    marker.write_text(f"{lock} {digest}\n")
    installed = environment_lock(marker)
    assert installed == {"file": str(lock), "sha256": digest}
    assert environment_lock(tmp_path / "absent") is None

    assert environment_differences(installed, installed) == []
    other = {"file": str(lock), "sha256": "0" * 64}
    assert "the model was built in the one of" in environment_differences(other, installed)[0]
    assert "no lock (not installed by make install)" in environment_differences(None, installed)[0]
    lock.write_text("torch==2.14.0\n")  # re-locked, not reinstalled
    assert any("changed since this environment was installed" in p for p in environment_differences(installed,
                                                                                                    installed))


def test_tampering_names_each_file_changed_since_promotion(tmp_path: Path) -> None:
    folder = tmp_path / "production"
    (folder / "merged").mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"\x00weights")
    (folder / "merged/config.json").write_text("{}")
    lineage = {"files": file_digests(folder)}
    (folder / "lineage.json").write_text("{}")  # not among the files it records
    assert set(lineage["files"]) == {"adapter_model.safetensors", "merged/config.json"}
    assert tampering(folder, lineage) == []

    (folder / "adapter_model.safetensors").write_bytes(b"\x01weights")  # one flipped byte
    (folder / "merged/config.json").unlink()
    (folder / "extra.py").write_text("import os")
    assert tampering(folder, lineage) == [f"{folder}/adapter_model.safetensors: modified since promotion",
                                          f"{folder}/merged/config.json: missing since promotion",
                                          f"{folder}/extra.py: added since promotion"]
    assert "records no file digests" in tampering(folder, {})[0]


def test_a_model_of_your_own_pipeline_is_checked_against_dvc_yaml_only(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The portfolio's records (older until `make portfolio` runs again) say nothing of your own pipeline's model."""
    monkeypatch.chdir(tmp_path)
    Path("dvc.lock").write_text(yaml.safe_dump({"stages": {"promote": {"outs": [{"path": "models/production"}]}}}))
    assert status_targets(["models/production"]) == ["dvc.yaml"]
    assert status_targets(["models/specializations/production/x"]) == ["--with-deps", "portfolio/dvc.yaml"]
    assert status_targets([]) == []


def test_a_model_trained_on_another_kind_of_processor_is_explained_not_counted_as_a_difference() -> None:
    """Training's float results depend on the CPU kernels PyTorch picks (AVX2, AVX512) or the GPU: the lineage
    records them, and `tailor lineage` says why a rebuild here would give other bytes, without failing."""
    here = compute()
    assert set(here) == {"machine", "cpu_kernels", "gpu"} and here["cpu_kernels"]
    assert compute_note(here, here) is None and compute_note(None, here) is None
    note = compute_note({**here, "cpu_kernels": "AVX2" if here["cpu_kernels"] != "AVX2" else "AVX512"}, here)
    assert note is not None and "differ in the last bits" in note and f"cpu_kernels {here['cpu_kernels']}" in note
