"""`tailor init` writes params.yaml from a ready example (the shipped params.yaml is one); `tailor check`: beyond
the schema, each data file exists, reads, and holds the columns its format needs under the mapped names; and the
prompted baseline is not given the demo's system prompt on other data. (Every example passing `tailor check` and
`validate` is checked in tests/flows/test_validate_corpus.py.)"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from benchmarks.harness import copy_repository
from tasks.cli import check, example_names, example_params, init
from tasks.core.errors import UserError

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
    path = params_file(tmp_path, train=csv_files["train"], eval=str(tmp_path / "absent.csv"), dev_pct=10,
                       group_by="customer")
    with pytest.raises(UserError) as error:
        check(path)
    message = str(error.value)
    assert "data.group_by: " in message and "has no column 'customer'; its columns are question, answer" in message
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


def test_the_shipped_params_yaml_is_the_portfolio_example() -> None:
    assert example_params("portfolio") == (REPO / "params.yaml").read_text()
    assert {"qa", "csv", "classification", "chat", "sharegpt", "dpo", "plain-text", "hub-gpu",
            "portfolio"} <= set(example_names())


def test_init_writes_an_example_and_its_data_and_keeps_uncommitted_edits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = copy_repository(tmp_path / "repo")
    monkeypatch.chdir(root)
    assert init("csv", force=False) == 0
    assert (root / "params.yaml").read_text() == example_params("csv")
    assert (root / "data/raw/qa_train.csv").read_text().startswith("question,answer")
    assert check(root / "params.yaml") == 0  # its data hold the columns it maps
    with pytest.raises(UserError, match="params.yaml has changes git does not have: commit them first"):
        init("chat", force=False)  # the csv example is not committed: refused, nothing lost
    assert (root / "params.yaml").read_text() == example_params("csv")
    assert init("chat", force=True) == 0 and "format: chat" in (root / "params.yaml").read_text()
    with pytest.raises(SystemExit):
        from tasks.cli import main
        monkeypatch.setattr("sys.argv", ["tailor", "init", "--example", "nonesuch"])
        main()
