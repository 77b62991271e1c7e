"""Every file of the bad-data corpus stops the real validate stage: exit 2, the problem named, nothing changed."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from stage_runner import copy_repository, run

pytestmark = pytest.mark.slow
CORPUS = Path(__file__).resolve().parents[1] / "data" / "bad_data"
CASES = json.loads((CORPUS / "cases.json").read_text())


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return h.hexdigest()


SHIPPED = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())


def write_params(project: Path, train: Path, evaluation: Path, validate: dict | None = None) -> None:
    """The shipped params with this case's data files and validate overrides (never a previous case's)."""
    params = copy.deepcopy(SHIPPED)
    params["data"].update(train=str(train), eval=str(evaluation))
    params["validate"].update(validate or {})
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> Path:
    """A copy of the repository whose validate stage has already run once on good data."""
    root = copy_repository(tmp_path_factory.mktemp("corpus"))
    shutil.copytree(CORPUS, root / "bad")
    good = run(root, "python", "-m", "flows.validate")
    assert good.returncode == 0, good.stderr[-3000:]
    return root


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_file_stops_validate(project: Path, name: str) -> None:
    case = CASES[name]
    validated = tree_digest(project / "data" / "validated")
    write_params(project, project / "bad" / name, project / "bad" / case.get("eval", "eval.jsonl"),
                 case.get("validate"))
    result = run(project, "python", "-m", "flows.validate")
    assert result.returncode == 2, result.stderr[-2000:]
    message = result.stderr.split("\ntailor: ", 1)[-1]
    assert case["expect"] in message, message
    assert name in message  # the file is named
    assert "Traceback" not in result.stderr
    assert tree_digest(project / "data" / "validated") == validated


def test_pii_check_can_be_turned_off(project: Path) -> None:
    write_params(project, project / "bad" / "pii_email.jsonl", project / "bad" / "eval.jsonl", {"pii": False})
    result = run(project, "python", "-m", "flows.validate")
    assert result.returncode == 0, result.stderr[-2000:]
