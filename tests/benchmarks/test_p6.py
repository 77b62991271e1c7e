"""P6 runs end to end on 60 rows (the tiny test tokenizer), so that the script cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_p6_measures_each_stage_in_its_own_process(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "p6.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.p6_scale", "--rows", "60", "--index-max-rows", "60", "--model", str(tiny_model_dir), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "P6 data at scale" in done.stdout and "tokenize 60" in done.stdout  # the table is printed
    result = json.loads(out.read_text())
    measured = [(p["stage"], p["rows"]) for p in result["points"]]
    assert measured == [("validate", 60), ("tokenize", 60), ("index", 60)]
    for point in result["points"]:
        assert 0 < point["seconds"] <= point["process_seconds"] and point["cpu_seconds"] > 0
        assert 0.05 < point["peak_rss_largest_process_gib"] <= point["peak_rss_gib"] < 3
        assert 0 < point["peak_pss_anon_gib"] <= point["peak_pss_gib"] <= point["peak_rss_gib"]
    assert result["goals_met"] and result["ratio_1m_to_100k"] == {}
