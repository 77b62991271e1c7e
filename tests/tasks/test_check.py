"""`tailor check`: beyond the schema, each data file exists, reads, and holds the columns its format needs under
the mapped names; and the prompted baseline is not given the demo's system prompt on other data."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tasks.cli import check
from tasks.errors import UserError

REPO = Path(__file__).resolve().parents[2]
SHIPPED = yaml.safe_load((REPO / "params.yaml").read_text())


def params_file(tmp_path: Path, **data: object) -> Path:
    raw = copy.deepcopy(SHIPPED)
    raw["data"].update(data)
    raw["specializations"], raw["multitask"] = {}, {}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def csv_files(tmp_path: Path) -> dict[str, str]:
    for split in ("train", "eval"):
        (tmp_path / f"{split}.csv").write_text("question,answer\nWhat is 2+2?,4\n")
    return {"train": str(tmp_path / "train.csv"), "eval": str(tmp_path / "eval.csv")}


def test_the_shipped_params_and_data_pass(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(REPO)
    assert check(REPO / "params.yaml") == 0
    assert "is valid" in capsys.readouterr().out


def test_unmapped_columns_and_a_missing_file_are_named(tmp_path: Path, csv_files: dict[str, str]) -> None:
    path = params_file(tmp_path, train=csv_files["train"], eval=str(tmp_path / "absent.csv"))
    with pytest.raises(UserError) as error:
        check(path)
    message = str(error.value)
    assert "data.train: " in message and "has no column 'prompt' (prompt), 'response' (response)" in message
    assert "its columns are question, answer: map yours under data.columns" in message
    assert f"data.eval: {tmp_path / 'absent.csv'}: file not found" in message


def test_the_demo_system_prompt_on_other_data_is_refused(tmp_path: Path, csv_files: dict[str, str]) -> None:
    columns = {**SHIPPED["data"]["columns"], "prompt": "question", "response": "answer"}
    path = params_file(tmp_path, **csv_files, columns=columns)
    with pytest.raises(UserError, match="baselines.system_prompt: still the demo's"):
        check(path)
    raw = yaml.safe_load(path.read_text())
    raw["baselines"]["system_prompt"] = "Answer the arithmetic question with a number."
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert check(path) == 0
