"""`dvc repro` end to end on the tiny model, in a temporary copy of the repository.

Every stage runs for real (Prefect flows against a real server, Great Expectations, Trainer + PEFT,
evaluation, promotion); only the base model is the tiny one, so the whole module takes a few minutes.
The tests share one copy and run in order, like a data scientist's session.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from stage_runner import EVAL, SECRET, TRAIN, pipeline_stages, run, set_params

from benchmarks.harness import environment, stages_run

pytestmark = pytest.mark.slow
OUTPUTS = ["data/validated", "data/tokenized", "models/adapter", "models/production", "reports/metrics.json"]


@pytest.fixture(scope="module")
def project(first_build) -> Path:
    return first_build.root


def digest(root: Path, paths: list[str]) -> dict[str, str]:
    """Content hash of each output, to prove a failed run changed none of them."""
    result = {}
    for name in paths:
        path = root / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        h = hashlib.sha256()
        for file in files:
            h.update(str(file.relative_to(root)).encode() + file.read_bytes())
        result[name] = h.hexdigest()
    return result


def test_repro_builds_and_promotes_a_specialist(project: Path, first_build) -> None:
    result = first_build.result
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert SECRET not in result.stdout + result.stderr
    for path in [*(project / "reports").rglob("*"), *(project / "models" / "production").rglob("*"),
                 project / "dvc.lock"]:
        assert not path.is_file() or SECRET.encode() not in path.read_bytes(), path
    ran = stages_run(result.stdout)
    assert ran[:3] == ["base_model", "validate", "tokenize"] and ran[-2:] == ["evaluate", "promote"]
    assert sorted(ran[3:5]) == ["evaluate_baselines", "finetune"]
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert set(metrics) >= {"generalist", "prompted", "retrieval", "finetuned", "finetuned+retrieval", "forgetting",
                            "comparisons", "decision"}
    for approach in ("generalist", "prompted", "retrieval", "finetuned", "finetuned+retrieval"):
        low, value, high = (metrics[approach][k] for k in ("perplexity_ci_low", "perplexity", "perplexity_ci_high"))
        assert low <= value <= high
    assert metrics["finetuned"]["perplexity"] < metrics["generalist"]["perplexity"]
    report = (project / "reports/specialization.md").read_text()
    assert report.rstrip().splitlines()[-1].startswith("Recommendation: ")
    # The judge (a stand-in on 127.0.0.1, sent the key from JUDGE_KEY): a win rate with its interval per approach.
    judged = metrics["judge"]["finetuned_win_rate"]
    assert set(judged) == {"generalist", "prompted", "retrieval", "finetuned+retrieval"}
    for other, rate in judged.items():
        assert 0 <= rate["ci_low"] <= rate["value"] <= rate["ci_high"] <= 1
        assert f"| {other} | {rate['value']:.3g} [{rate['ci_low']:.3g}, {rate['ci_high']:.3g}] |" in report
    assert f"{metrics['finetuned']['perplexity']:.4g}" in report  # the report shows the metrics file's numbers
    assert (project / "reports/specialization.png").read_bytes()[:4] == b"\x89PNG"
    decision = json.loads((project / "reports/promotion.json").read_text())
    assert decision["promoted"] is True, decision
    gates = {g["name"]: g["status"] for g in decision["gates"]}
    assert gates == {"finite_metrics": "pass", "not_beaten": "pass", "specializes": "pass",
                     "beats_production": "skipped", "forgetting": "pass", "parity": "pass"}
    assert decision["approach"] == metrics["decision"]["recommended"] == "finetuned"
    assert json.loads((project / "models/production/approach.json").read_text())["approach"] == "finetuned"
    lineage = json.loads((project / "models/production/lineage.json").read_text())
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    locked_adapter = next(o["md5"] for o in lock["stages"]["finetune"]["outs"] if o["path"] == "models/adapter")
    assert lineage["inputs"]["models/adapter"] == locked_adapter
    assert lineage["inputs"][TRAIN].startswith(
        next(d["md5"] for d in lock["stages"]["validate"]["deps"] if d["path"] == TRAIN))
    # Code is pinned by its hashes (a git revision would differ on every clone that rebuilds the model).
    assert lineage["inputs"]["tasks/train/training.py"] == next(
        d["md5"] for d in lock["stages"]["finetune"]["deps"] if d["path"] == "tasks/train/training.py")
    assert "git_revision" not in lineage
    shown = run(project, "dvc", "metrics", "show", "--json")
    assert "finetuned" in shown.stdout and shown.returncode == 0
    plots = run(project, "dvc", "plots", "show", "--json")
    assert plots.returncode == 0 and "Training loss" in json.loads(plots.stdout)["data"]
    assert '"loss": ' in plots.stdout and "error" not in plots.stdout


def production_answers(root: Path) -> bool:
    """Load models/production in a fresh process of root and generate an answer with it."""
    script = (
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "from peft import PeftModel\n"
        "tok = AutoTokenizer.from_pretrained('models/production')\n"
        "model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained('models/base'), 'models/production')\n"
        "ids = tok.apply_chat_template([{'role': 'user', 'content': 'What does `len(obj)` do?'}],"
        " add_generation_prompt=True, return_tensors='pt', return_dict=True)\n"
        "out = model.generate(**ids, max_new_tokens=5, do_sample=False)\n"
        "print('ANSWER', out.shape[1] - ids['input_ids'].shape[1])\n"
    )
    result = run(root, "python", "-c", script)
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout.split("ANSWER")[1]) > 0


def test_production_loads_in_a_fresh_process(project: Path) -> None:
    assert production_answers(project)


def test_second_repro_runs_nothing(project: Path) -> None:
    result = run(project, "dvc", "repro")
    assert result.returncode == 0 and stages_run(result.stdout) == []
    assert "up to date" in result.stdout


def stages_due(project: Path) -> list[str]:
    """The stages `dvc repro` would run now, from its dry run (nothing runs, dvc.lock is untouched)."""
    result = run(project, "dvc", "repro", "--dry")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return stages_run(result.stdout)


def test_code_edits_rerun_only_the_stages_they_affect(project: Path) -> None:
    """A metric's code feeds evaluate (not the baselines' generation); an expectation's code feeds validate
    only, not the stages that read the validated data."""
    edited = {module: (project / module).read_text(encoding="utf-8")
              for module in ("tasks/evaluate/scoring.py", "tasks/data/validation.py")}
    for module, code in edited.items():
        (project / module).write_text(code + "# an edit\n", encoding="utf-8")
    try:
        due = stages_due(project)
    finally:
        for module, code in edited.items():
            (project / module).write_text(code, encoding="utf-8")
    assert {"validate", "evaluate"} <= set(due)
    assert not {"base_model", "tokenize", "finetune", "evaluate_baselines"} & set(due), due


@pytest.mark.parametrize(("module", "stage"), [("tasks/model/sources.py", "base_model"),
                                              ("tasks/formats/chat.py", "validate")])
def test_a_fix_to_model_downloads_or_to_one_format_reruns_its_stage_only(project: Path, module: str,
                                                                          stage: str) -> None:
    """Downloading a base model is apart from loading one, and a format's reading is validate's alone: a fix to
    either re-runs that stage, and what follows only if its output changes."""
    code = (project / module).read_text(encoding="utf-8")
    (project / module).write_text(code + "# a fix\n", encoding="utf-8")
    try:
        assert stages_due(project) == [stage]
    finally:
        (project / module).write_text(code, encoding="utf-8")


def cached_outputs(root: Path) -> list[str]:
    """Every output dvc.lock records for this project's stages (each one cached, so `dvc push` carries it). The
    lock copied from the repository also records the demo portfolio's run, whose stages this project lacks."""
    stages = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    return sorted({out["path"] for name in pipeline_stages(root) for out in stages[name].get("outs", [])})


def test_push_then_pull_into_a_fresh_clone_gives_identical_artifacts(project: Path) -> None:
    git = ("git", "-c", "user.name=t", "-c", "user.email=t@localhost")
    assert run(project, *git, "commit", "-qam", "first build").returncode == 0
    pushed = run(project, "dvc", "push")
    assert pushed.returncode == 0, pushed.stdout[-2000:] + pushed.stderr[-2000:]
    # A sibling, so the default remote (a directory beside the repository) is the same one.
    clone = project.parent / "fresh-clone"
    assert run(project.parent, "git", "clone", "-q", str(project), str(clone)).returncode == 0
    pulled = run(clone, "dvc", "pull")
    assert pulled.returncode == 0, pulled.stdout[-2000:] + pulled.stderr[-2000:]

    outputs = cached_outputs(project)
    assert {"data/validated", "data/tokenized", "models/adapter", "models/production",
            "reports/metrics.json"} <= set(outputs)
    assert digest(clone, outputs) == digest(project, outputs)
    status = run(clone, "dvc", "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout) == {}, status.stdout
    data_status = run(clone, "dvc", "data", "status", "--json")
    assert data_status.returncode == 0 and json.loads(data_status.stdout) == {}, data_status.stdout
    assert production_answers(clone)

    # Every output is rebuilt byte for byte: a forced re-run of the whole pipeline in the clone leaves dvc.lock
    # as committed (what the machine measures, Data Docs and checkpoints are written outside the outputs). Without
    # the production model, as on the first build: against itself, promotion would decide otherwise.
    shutil.rmtree(clone / "models/production")
    rebuilt = run(clone, "dvc", "repro", "--force")
    assert rebuilt.returncode == 0, rebuilt.stdout[-3000:] + rebuilt.stderr[-3000:]
    assert stages_run(rebuilt.stdout)[-1] == "promote"
    diff = run(clone, "git", "diff", "--stat", "dvc.lock")
    assert diff.returncode == 0 and diff.stdout == "", diff.stdout
    assert json.loads((clone / "reports/timings/training.json").read_text())["train_seconds"] > 0
    lineage = run(clone, "tailor", "lineage")
    assert lineage.returncode == 0 and "matches dvc.lock" in lineage.stdout, lineage.stdout + lineage.stderr


def test_lineage_command_checks_production_against_dvc_lock(project: Path) -> None:
    same = run(project, "tailor", "lineage", "models/production")
    assert same.returncode == 0, same.stdout + same.stderr
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    train_md5 = next(d["md5"] for d in lock["stages"]["validate"]["deps"] if d["path"] == TRAIN)
    assert TRAIN in same.stdout and train_md5 in same.stdout and "matches dvc.lock" in same.stdout

    train = project / TRAIN
    original = train.read_text(encoding="utf-8")
    train.write_text(original + original.splitlines()[0].replace("?", "??") + "\n", encoding="utf-8")
    try:
        changed = run(project, "tailor", "lineage")
    finally:
        train.write_text(original, encoding="utf-8")
    assert changed.returncode == 1, changed.stdout + changed.stderr
    assert "DIFFERS" in changed.stdout and f"{TRAIN}: modified in the workspace" in changed.stdout

    weights = project / "models/production/adapter_model.safetensors"
    original_weights = weights.read_bytes()
    weights.write_bytes(original_weights[:-1] + bytes([original_weights[-1] ^ 1]))  # one flipped bit
    try:
        tampered = run(project, "tailor", "lineage")
    finally:
        weights.write_bytes(original_weights)
    assert tampered.returncode == 1 and "adapter_model.safetensors: modified since promotion" in tampered.stdout

    missing = run(project, "tailor", "lineage", "models/adapter")
    assert missing.returncode == 2 and "models/adapter is not a promoted model" in missing.stderr


def test_evaluation_knobs_rerun_evaluation_only(project: Path) -> None:
    params = (project / "params.yaml").read_text()
    set_params(project, "baselines", few_shot_k=1)
    set_params(project, "evaluate", bootstrap_samples=300)
    try:
        due = stages_due(project)
    finally:
        (project / "params.yaml").write_text(params)
    assert {"evaluate_baselines", "evaluate"} <= set(due)
    assert set(due) <= {"evaluate_baselines", "evaluate", "promote"}  # no retraining, no re-tokenizing


def test_a_training_knob_reruns_training_onward_only(project: Path) -> None:
    params = (project / "params.yaml").read_text()
    set_params(project, "finetune", learning_rate=0.01)
    try:
        due = stages_due(project)
    finally:
        (project / "params.yaml").write_text(params)
    assert due[0] == "finetune" and set(due) <= {"finetune", "evaluate", "promote"}  # no baselines, no tokenizing


def test_two_repros_at_once_one_waits_its_turn(project: Path) -> None:
    before = digest(project, OUTPUTS)
    first = subprocess.Popen(["dvc", "repro", "--force", "--single-item", "promote"], cwd=project,
                             env=environment(PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    # The first run holds DVC's repository lock while its stage runs (a few seconds: the stage's imports and its
    # Prefect run); the second starts once the stage has, rather than after a fixed wait a fast machine outruns.
    started = []
    for line in first.stdout:  # type: ignore[union-attr]
        started.append(line)
        if line.startswith("Running stage 'promote'"):
            break
    second = run(project, "dvc", "repro")
    rest, _ = first.communicate(timeout=300)
    output = "".join(started) + rest
    assert first.returncode == 0, output[-3000:]
    assert second.returncode != 0
    assert "is busy, it is being blocked by" in second.stderr or "Unable to acquire lock" in second.stderr
    # The re-run candidate equals production, so it cannot beat it: not promoted, nothing changes.
    decision = json.loads((project / "reports/promotion.json").read_text())
    assert decision["promoted"] is False
    assert "beats_production" in decision["reason"] and "production left unchanged" in decision["reason"]
    assert digest(project, OUTPUTS) == before


def repro_after_the_fix(project: Path, before: dict[str, str], reruns: list[str]) -> None:
    """With the mistake undone, `dvc repro` re-runs only `reruns` and every output is as before. (DVC clears a
    stage's outputs that are not `persist` before running it; the run cache checks them out again, for the stages
    whose outputs are all not `persist`, which DVC's run cache requires.)"""
    again = run(project, "dvc", "repro")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert stages_run(again.stdout) == reruns, again.stdout[-3000:]
    assert digest(project, OUTPUTS) == before


def test_broken_data_stops_at_validate_and_changes_nothing(project: Path) -> None:
    """An eval row leaked into train (each kind of bad file is in tests/data/bad_data, run by the stage): validate
    stops, the last validated data stay, and reports/validation.json says what failed."""
    train = project / TRAIN
    original = train.read_text(encoding="utf-8")
    extra = pd.read_csv(project / EVAL).iloc[[3]].to_csv(header=False, index=False).rstrip("\n")
    expectation = "expect_column_values_to_not_be_in_set"
    before = digest(project, OUTPUTS)
    train.write_text(original + extra + "\n", encoding="utf-8")
    try:
        result = run(project, "dvc", "repro")
        assert result.returncode != 0
        assert stages_run(result.stdout) == ["validate"]
        assert expectation in result.stderr and "Traceback" not in result.stderr
        assert digest(project, OUTPUTS) == before
        assert json.loads((project / "reports/validation.json").read_text())["success"] is False
    finally:
        train.write_text(original, encoding="utf-8")
    repro_after_the_fix(project, before, ["validate"])  # validate keeps its data (`persist`): no run cache


def test_bad_params_stop_with_the_key_named(project: Path) -> None:
    """A misspelled key (each kind of bad params is in tests/data/bad_params, checked by the schema) stops the first
    stage that runs, here finetune (its section changed), before it trains; DVC's run cache gives its outputs back."""
    path = project / "params.yaml"
    original = path.read_text()
    params = yaml.safe_load(original)
    params["finetune"]["learnig_rate"] = params["finetune"].pop("learning_rate")
    named = "finetune.learnig_rate: unknown key"
    before = digest(project, OUTPUTS)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        result = run(project, "dvc", "repro")
    finally:
        path.write_text(original)
    assert result.returncode != 0
    assert stages_run(result.stdout) == ["finetune"], result.stdout[-2000:]
    assert named in result.stderr
    assert "Traceback" not in result.stderr
    repro_after_the_fix(project, before, [])
