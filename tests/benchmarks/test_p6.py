"""P6 runs end to end on 60 rows (the tiny test tokenizer), so that the script cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from benchmarks.p6_scale import generate, run_index

REPO = Path(__file__).resolve().parents[2]


def test_p6_measures_each_stage_in_its_own_process(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "p6.json"
    # The index stage is left out here (sentence-transformers takes 5-10 s to import in a fresh process); the
    # next test runs its code in this one.
    done = subprocess.run([sys.executable, "-m", "benchmarks.p6_scale", "--rows", "60", "--index-max-rows", "0",
                           "--model", str(tiny_model_dir), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "P6 data at scale" in done.stdout and "tokenize 60" in done.stdout  # the table is printed
    result = json.loads(out.read_text())
    assert [(p["stage"], p["rows"]) for p in result["points"]] == [("validate", 60), ("contamination", 60),
                                                                   ("tokenize", 60)]
    for point in result["points"]:
        assert 0 < point["seconds"] <= point["process_seconds"] and point["cpu_seconds"] > 0
        assert 0.05 < point["peak_rss_largest_process_gib"] <= point["peak_rss_gib"] < 3
        assert 0 < point["peak_pss_anon_gib"] <= point["peak_pss_gib"] <= point["peak_rss_gib"]
    assert result["goals_met"] and result["ratio_1m_to_100k"] == {}


def test_p6_index_stage_indexes_the_generated_rows(tmp_path: Path) -> None:
    generate(2200, tmp_path / "train.jsonl")  # more rows than the demo has: copies are made unique
    rows = pd.read_json(tmp_path / "train.jsonl", lines=True, dtype=False)
    assert len(rows) == 2200 and not rows.duplicated().any() and rows["prompt"].iloc[-1].endswith("(variant 1)")
    (tmp_path / "validated").mkdir()
    rows.tail(70).to_parquet(tmp_path / "validated" / "train.parquet")
    rows.head(5).to_parquet(tmp_path / "validated" / "eval.parquet")
    run_index(tmp_path)
    assert json.loads((tmp_path / "index" / "index.json").read_text()) == {"retriever": "minilm", "documents": 70}
