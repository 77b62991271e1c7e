"""Every file of the bad-data corpus stops the real validate stage: exit 2, the problem named, nothing changed.

The stage command (`python -m flows.validate`) runs once per case, all cases in one Python process through
runpy, with the process's stderr (file descriptor 2) captured per case: the same code path as a fresh process
each, without paying ~7 s of imports for every case. The stage reads only the params dvc.yaml gives it (seed,
data, validate) and the files they name: a case whose inputs are the same as an earlier case's (two examples on the
same data) gets that case's outcome instead of a second, identical run.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from stage_runner import run, stage_command

from benchmarks.harness import copy_repository
from tasks.cli import example_names, example_params

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "data" / "bad_data"
CASES = json.loads((CORPUS / "cases.json").read_text())
SHIPPED = yaml.safe_load((REPO / "params.yaml").read_text())

RUN_EACH = r"""
import hashlib, json, os, runpy, sys, tempfile
from pathlib import Path

import yaml

def digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return h.hexdigest()

from tasks.cli import check

results, by_inputs = {}, {}
cases, outcomes, stage_args = sys.argv[1], sys.argv[2], sys.argv[3:]
for name, params in json.loads(Path(cases).read_text()).items():
    Path("params.yaml").write_text(params)
    checked = ""
    if name.startswith("example_"):  # `tailor check` too: the schema, the data files and their columns
        try:
            check(Path("params.yaml"))
        except Exception as exc:
            checked = str(exc)
    inputs = json.dumps([yaml.safe_load(params).get(key) for key in ("seed", "data", "validate")], sort_keys=True)
    if inputs in by_inputs:
        results[name] = {**by_inputs[inputs], "checked": checked}
        continue
    before = digest("data/validated")
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        sys.argv = ["flows.validate", *stage_args]  # the stage's paths, as dvc.yaml gives them
        try:
            runpy.run_module("flows.validate", run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = exc.code
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
        captured.seek(0)
        stderr = captured.read().decode(errors="replace")
    results[name] = by_inputs[inputs] = {"code": code, "stderr": stderr,
                                         "unchanged": digest("data/validated") == before, "checked": checked}
Path(outcomes).write_text(json.dumps(results))
"""


def params_for(root: Path, train: str, evaluation: str, validate: dict | None = None,
               data: dict | None = None) -> str:
    """The shipped params with this case's data files, data format and validate overrides (never a previous
    case's)."""
    params = copy.deepcopy(SHIPPED)
    params["data"].update(train=str(root / "bad" / train), eval=str(root / "bad" / evaluation), **(data or {}))
    params["validate"].update(validate or {})
    if params["data"]["format"] == "text":
        params["promote"]["metric"] = "perplexity"  # the only kind of metric plain text has
    return yaml.safe_dump(params, sort_keys=False)


PORTFOLIO = ("classification", "summarization", "translation")
LABELS = ["asyncio", "datetime", "decimal", "logging", "os", "socket", "tarfile", "zipfile"]


def portfolio_params(task: str) -> str:
    """The shipped params on one of the demo portfolio's datasets (data/portfolio), as the README runs it."""
    params = copy.deepcopy(SHIPPED)
    params["data"].update(train=f"data/portfolio/{task}/train.jsonl", eval=f"data/portfolio/{task}/eval.jsonl")
    params["evaluate"]["task"] = task
    params["promote"]["metric"] = {"classification": "macro_f1", "summarization": "rouge_l", "translation": "chrf"}[task]
    if task == "classification":
        params["validate"]["allowed_responses"] = LABELS
    return yaml.safe_dump(params, sort_keys=False)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> dict[str, dict[str, Any]]:
    """Each case's exit code, stderr and whether data/validated stayed as the good run left it."""
    root = copy_repository(tmp_path_factory.mktemp("corpus"))
    shutil.copytree(CORPUS, root / "bad")
    good = run(root, *stage_command(root, "validate"))
    assert good.returncode == 0, good.stderr[-3000:]
    cases = {name: params_for(root, name, case.get("eval", "eval.jsonl"), case.get("validate"), case.get("data"))
             for name, case in CASES.items()}
    cases["pii_allowed"] = params_for(root, "pii_email.jsonl", "eval.jsonl", {"pii": False})
    cases["text_good"] = params_for(root, "text_good.jsonl", "text_eval.jsonl",
                                    data={"format": "text", "columns": {"text": "body"}})
    cases["chat_good"] = params_for(root, "chat_good.jsonl", "chat_eval.jsonl", data={"format": "chat"})
    cases["pref_good"] = params_for(root, "pref_good.jsonl", "pref_eval.jsonl", data={"format": "preference"})
    cases["chat_good_sharegpt"] = params_for(root, "chat_good_sharegpt.jsonl", "chat_eval_sharegpt.jsonl",
                                             data=CASES["chat_sharegpt_unknown_role.jsonl"]["data"])
    cases.update({f"portfolio_{task}": portfolio_params(task) for task in PORTFOLIO})
    for name in example_names():  # each ready example, with its data written as `tailor init` writes them
        generator = root / "examples" / name / "generate.py"
        assert not generator.is_file() or run(root, "python", str(generator)).returncode == 0
        cases[f"example_{name}"] = example_params(name, root)
    (root / "cases.json").write_text(json.dumps(cases))
    done = run(root, "python", "-c", RUN_EACH, "cases.json", "outcomes.json", *stage_command(root, "validate")[3:])
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((root / "outcomes.json").read_text())


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("name", example_names(REPO))
def test_every_example_passes_tailor_check_and_validate(outcomes: dict[str, dict[str, Any]], name: str) -> None:
    assert outcomes[f"example_{name}"]["code"] == 0, outcomes[f"example_{name}"]["stderr"][-2000:]
    assert outcomes[f"example_{name}"]["checked"] == "", outcomes[f"example_{name}"]["checked"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_file_stops_validate(outcomes: dict[str, dict[str, Any]], name: str) -> None:
    outcome = outcomes[name]
    assert outcome["code"] == 2, outcome["stderr"][-2000:]
    message = outcome["stderr"].split("\ntailor: ", 1)[-1]
    assert CASES[name]["expect"] in message, message
    assert CASES[name].get("line", "") in message, message  # a conversation's line and turn
    assert name in message  # the file is named
    assert "Traceback" not in outcome["stderr"]
    # Printed once: the `tailor:` message, none of Prefect's copies (task run, flow run, their final states).
    assert outcome["stderr"].count("tailor: ") == 1 and "UserError" not in outcome["stderr"], outcome["stderr"]
    assert outcome["unchanged"]


def test_pii_check_can_be_turned_off(outcomes: dict[str, dict[str, Any]]) -> None:
    assert outcomes["pii_allowed"]["code"] == 0, outcomes["pii_allowed"]["stderr"][-2000:]


@pytest.mark.parametrize("name", ["text_good", "chat_good", "chat_good_sharegpt", "pref_good",
                                  *(f"portfolio_{task}" for task in PORTFOLIO)])
def test_clean_files_of_every_format_pass(outcomes: dict[str, dict[str, Any]], name: str) -> None:
    assert outcomes[name]["code"] == 0, outcomes[name]["stderr"][-2000:]
