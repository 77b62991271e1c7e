"""A new data format is one module of tasks/formats/ and one line of its registry, and nothing else: this test adds
completion pairs spelled `input`/`output` to a copy of the repository, then `tailor check` and `dvc repro` take a
file in that spelling through validate, tokenize and evaluate_baselines on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from stage_runner import new_tiny_project, run, set_params, use_raw_data

from benchmarks.harness import stages_run

COMPLETION = '''"""Completion pairs (`data.format: completion`): an `input` and its `output` per row."""

from __future__ import annotations

import pandas as pd

from tasks.core.params import DataParams, ValidateParams
from tasks.data.validation import Checks, row_checks
from tasks.formats.format import Format, exchange


def columns(data: DataParams) -> dict[str, str]:
    return {"prompt": "input", "response": "output"}


def checks(data: DataParams, limits: ValidateParams) -> Checks:
    return row_checks(["input", "output"], limits)


def canonical(chunk: pd.DataFrame, data: DataParams) -> pd.DataFrame:
    return pd.DataFrame({"messages": [exchange(i, o) for i, o in zip(chunk["input"], chunk["output"])]})


FORMAT = Format(columns, checks, canonical)
'''
REGISTERED = '    "preference": Registered("tasks.formats.preference", PAIR),\n'


def as_completions(path: Path) -> str:
    rows = pd.read_json(path, lines=True).rename(columns={"prompt": "input", "response": "output"})
    return rows.to_json(orient="records", lines=True, force_ascii=False)


def test_a_fifth_format_added_as_one_module_and_one_registry_line_runs_to_the_baselines(
        tmp_path: Path, tiny_model_dir: Path, prefect_api: str) -> None:
    root = new_tiny_project(tmp_path, tiny_model_dir)
    (root / "tasks/formats/completion.py").write_text(COMPLETION)
    registry = root / "tasks/formats/registry.py"
    assert REGISTERED in registry.read_text()
    registry.write_text(registry.read_text().replace(
        REGISTERED, REGISTERED + '    "completion": Registered("tasks.formats.completion", CONVERSATION),\n'))
    changed = run(root, "git", "status", "--porcelain", "--", "tasks", "flows").stdout.splitlines()
    assert sorted(changed) == [" M tasks/formats/registry.py", "?? tasks/formats/completion.py"]

    use_raw_data(root, as_completions(root / "data/demo/train.jsonl"), as_completions(root / "data/demo/eval.jsonl"),
                 format="completion")
    set_params(root, "baselines", system_prompt="Complete the text about a Python callable in one sentence.")
    # `tailor check` as this copy's code runs it (the installed `tailor` runs the repository it was installed from).
    checked = run(root, "python", "-m", "tasks.cli", "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    built = run(root, "dvc", "repro", "tokenize", "evaluate_baselines")
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert {"validate", "tokenize", "evaluate_baselines"} <= set(stages_run(built.stdout)), built.stdout[-2000:]

    assert json.loads((root / "reports/validation.json").read_text())["success"]
    tokenized = json.loads((root / "reports/tokenize.json").read_text())
    assert tokenized["train"]["examples"] == 240 and tokenized["train"]["dropped"] == 0
    validated = pd.read_parquet(root / "data/validated/train.parquet")
    first = json.loads(validated["messages"][0])
    source = pd.read_json(root / "data/raw/train.jsonl", lines=True)
    assert first == [{"role": "user", "content": source["input"][0]},
                     {"role": "assistant", "content": source["output"][0]}]
    scores = json.loads((root / "reports/baselines.json").read_text())
    assert set(scores["approaches"]) == {"generalist", "prompted", "retrieval"}
    evaluation = pd.read_json(root / "data/raw/eval.jsonl", lines=True)
    assert {example["prompt"] for example in scores["examples"]} <= set(evaluation["input"])

    # A file in another spelling is refused at validate, naming the column the new format reads.
    broken = as_completions(root / "data/demo/train.jsonl").replace('"output"', '"answer"')
    (root / "data/raw/train.jsonl").write_text(broken, encoding="utf-8")
    refused = run(root, "dvc", "repro", "validate")
    assert refused.returncode != 0 and "expect_column_to_exist(output)" in refused.stdout + refused.stderr
