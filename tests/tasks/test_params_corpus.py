"""The bad-params corpus: each broken params.yaml stops `tailor check` with exit 2, naming the key.

The command runs in this process (`tailor`'s entry point with its argv, its exit and its stderr): the same code as a
fresh process each, without paying ~4 s of imports per case."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tasks.cli import main

REPO = Path(__file__).resolve().parents[2]
CASES = yaml.safe_load((REPO / "tests" / "data" / "bad_params" / "cases.yaml").read_text())
SHIPPED = yaml.safe_load((REPO / "params.yaml").read_text())


def broken(case: dict) -> dict:
    raw = copy.deepcopy(SHIPPED)
    *parents, leaf = case.get("rename", case["set"]).split(".")
    node = raw
    for key in parents:
        node = node[key]
    if "rename" in case:
        node[case["set"].split(".")[-1]] = node.pop(leaf)
    elif case.get("remove"):
        del node[leaf]
    else:
        node[leaf] = case["value"]
    return raw


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", CASES, ids=[f"{c['set']}={c.get('value', '')}" for c in CASES])
def test_broken_params_stop_with_the_key_named(case: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(broken(case), sort_keys=False))
    monkeypatch.chdir(REPO)
    monkeypatch.setattr("sys.argv", ["tailor", "check", str(path)])
    with pytest.raises(SystemExit) as stopped:  # any other exception is a traceback, and fails the test
        main()
    stderr = capsys.readouterr().err
    assert stopped.value.code == 2
    assert case["expect"] in stderr, stderr
    assert stderr.startswith(f"tailor: {path} is invalid:") and "Traceback" not in stderr
