from __future__ import annotations

from pathlib import Path

import yaml

from tasks.lineage import model_inputs


def entry(path: str, md5: str) -> dict[str, str]:
    return {"path": path, "md5": md5}


def test_model_inputs_follow_the_dag_back_from_the_model_and_leave_reports_out(tmp_path: Path) -> None:
    lock = tmp_path / "dvc.lock"
    lock.write_text(yaml.safe_dump({"stages": {
        "validate": {"deps": [entry("tasks/validation.py", "c1"), entry("data/raw.jsonl", "raw")],
                     "outs": [entry("data/validated", "val"), entry("reports/data_docs", "docs")]},
        "tokenize": {"deps": [entry("data/validated", "stale"), entry("models/base", "base")],
                     "outs": [entry("data/tokenized", "tok")]},
        "base_model": {"deps": [entry("chat_templates", "tpl")], "outs": [entry("models/base", "base")]},
        "finetune": {"deps": [entry("data/tokenized/train", "train"), entry("models/base", "base")],
                     "outs": [entry("models/adapter", "adapter"), entry("reports/training.json", "timing")]},
        "evaluate": {"deps": [entry("models/adapter", "adapter")], "outs": [entry("reports/metrics.json", "m")]},
    }}))
    inputs = model_inputs([Path("models/adapter"), Path("models/base")], lock)
    assert inputs == {"chat_templates": "tpl", "data/raw.jsonl": "raw", "data/tokenized": "tok",
                      "data/tokenized/train": "train", "data/validated": "val", "models/adapter": "adapter",
                      "models/base": "base"}
    assert model_inputs([Path("models/adapter")], tmp_path / "missing.lock") == {}
