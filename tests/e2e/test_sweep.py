"""`tailor sweep` end to end on the tiny project: three learning rates as DVC experiments scored on the dev split,
the best chosen on dev and written into params.yaml, then `dvc repro` scores that one once on the test split with
the training the trial did (DVC's run cache), and the report says how many configurations were compared."""

from __future__ import annotations

import json
from pathlib import Path

import dvc.api
import pandas as pd
import pytest
import yaml
from stage_runner import new_tiny_project, run, set_params, stage_command

pytestmark = [pytest.mark.slow, pytest.mark.long]
RATES = [0.002, 0.02, 0.2]


def test_a_sweep_chooses_on_dev_and_scores_the_choice_on_test_once(tmp_path_factory: pytest.TempPathFactory,
                                                                    tiny_model_dir: Path, prefect_api: str) -> None:
    root = new_tiny_project(tmp_path_factory.mktemp("sweep"), tiny_model_dir)
    set_params(root, "data", dev_pct=20)
    run(root, "git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qam", "a dev split")
    (root / "lr.yaml").write_text(yaml.safe_dump({"params": {"finetune.learning_rate": RATES}}))

    swept = run(root, "tailor", "sweep", "lr.yaml", timeout=1200)
    assert swept.returncode == 0, swept.stderr[-4000:]

    # Three experiments, each scored on dev only.
    trials = [row for row in dvc.api.exp_show(repo=str(root)) if (row.get("Experiment") or "").startswith("lr-")]
    assert sorted(row["finetune.learning_rate"] for row in trials) == RATES
    assert {row["evaluate.split"] for row in trials} == {"dev"} and {row["State"] for row in trials} == {"Success"}
    for row in trials:
        scored = json.loads(dvc.api.read("reports/metrics.json", repo=str(root), rev=row["rev"]))
        assert scored["selection"]["split"] == "dev"
    # The lowest dev perplexity (promote.metric) is chosen and written into params.yaml.
    record = json.loads((root / "reports/sweep.json").read_text())
    by_rate = {t["settings"]["finetune.learning_rate"]: t["value"] for t in record["trials"]}
    chosen = min(by_rate, key=by_rate.get)
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert params["finetune"]["learning_rate"] == chosen and params["evaluate"]["split"] == "test"
    assert params["evaluate"]["configurations_compared"] == 3 == record["configurations_compared"]
    assert "| dev perplexity [interval] |" in (root / "reports/sweep.md").read_text()
    assert (root / "reports/sweep.png").stat().st_size > 0

    # dvc repro took the chosen trial's training from the run cache and scored it once, on the test split.
    after_choice = swept.stderr.split("tailor: params.yaml now has")[1]
    assert "Stage 'finetune' is cached - skipping run" in after_choice
    assert after_choice.count("Running stage 'evaluate':") == 1
    report = (root / "reports/specialization.md").read_text()
    assert "3 configurations compared on dev before this one was chosen" in report
    assert "16 held-out examples (a sample of 16 of the test split's 24 rows" in report
    assert json.loads((root / "reports/metrics.json").read_text())["selection"] == {
        "split": "test", "configurations_compared": 3}
    assert (root / "reports/promotion.json").exists()
    # The dev split: 20% of the 240 training rows, carved out of train.
    train, dev = (pd.read_parquet(root / f"data/validated/{split}.parquet") for split in ("train", "dev"))
    assert (len(train), len(dev)) == (192, 48) and set(train["messages"]).isdisjoint(dev["messages"])

    # A candidate scored on dev is never promoted: promote says why, and the production model stays.
    production = sorted((root / "models/production").rglob("*"))
    set_params(root, "evaluate", split="dev")
    refused = run(root, *stage_command(root, "promote"))
    assert refused.returncode == 2 and "evaluate.split is dev" in refused.stderr, refused.stderr[-2000:]
    assert sorted((root / "models/production").rglob("*")) == production
