"""Operating the pipeline through Prefect: the deployment from prefect.yaml on a real server and a real process
worker runs the pipeline as a DVC experiment with the UI's overrides (re-running only the stages they affect),
pushes a promoted model, skips work when nothing changed, and stops every process when the run is cancelled."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.sorting import LogSort
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Cancelling
from stage_runner import run

from benchmarks.harness import environment, stages_run, stop

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, first_build, prefect_api: str) -> Iterator[Path]:
    """A copy of the first build, committed, without a production model yet, deployed from its prefect.yaml,
    with a worker."""
    root = tmp_path_factory.mktemp("deployed") / "repo"
    shutil.copytree(first_build.root, root, symlinks=True)
    # Forget the promotion (its model and its dvc.lock record), so that the deployment run's candidate, compared
    # with the baselines only, is promoted and pushed.
    shutil.rmtree(root / "models/production")
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    del lock["stages"]["promote"]
    (root / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    committed = run(root, "git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qam", "built")
    assert committed.returncode == 0, committed.stderr
    pool = run(root, "prefect", "work-pool", "create", "tailor", "--type", "process", "--overwrite")
    assert pool.returncode == 0, pool.stdout + pool.stderr
    deploy = run(root, "prefect", "--no-prompt", "deploy", "--all")
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    log = (root.parent / "worker.log").open("w")
    worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "tailor"], cwd=root,
                              env=environment(), stdout=log, stderr=subprocess.STDOUT)
    # This process imported Prefect before the test server existed; point its client at the server.
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        yield root
    stop(worker)


def flow_run_log(flow_run_id: object) -> str:
    """The run's whole log as the server holds it. The run's process sends its logs in batches, the last as it
    exits, after the run is already reported complete: wait (up to 60 s) for the flow's closing line."""
    deadline = time.monotonic() + 60
    while True:
        entries: list[Any] = []
        with get_client(sync_client=True) as client:
            while page := client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                           limit=200, offset=len(entries), sort=LogSort.TIMESTAMP_ASC):
                entries += page
        closed = any(e.task_run_id is None and e.message.startswith("Finished in state") for e in entries)
        if closed or time.monotonic() > deadline:
            return "\n".join(entry.message for entry in entries)
        time.sleep(1)


def test_deployment_and_schedule_are_registered(deployed: Path) -> None:
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("specialize/weekly")
    assert deployment.work_pool_name == "tailor"
    assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * 1"]
    assert deployment.schedules[0].active
    # The UI's run form: the flow's parameters with their types and descriptions.
    form = deployment.parameter_openapi_schema["properties"]
    assert {"learning_rate", "max_steps", "lora_r", "settings", "force", "push"} <= set(form)
    assert "finetune.learning_rate" in form["learning_rate"]["description"]


def test_run_with_an_override_becomes_a_dvc_experiment(deployed: Path) -> None:
    started = time.time()
    # A form field set to the value params.yaml has (nothing to re-train) and a free setting of a gate (stricter
    # than the build's 10.0 and still passed): only promote is due. (What a training knob would re-run is checked
    # by DVC's dry run in test_pipeline.py.)
    flow_run = run_deployment("specialize/weekly", timeout=900, parameters={
        "max_steps": 8, "settings": ["promote.max_forgetting=9.0"]})
    log = flow_run_log(flow_run.id)
    assert flow_run.state.is_completed(), f"{flow_run.state}\n{log[-3000:]}"
    assert "running the pipeline: finetune.max_steps=8, promote.max_forgetting=9.0" in log
    assert stages_run(log) == ["promote"], log[-3000:]

    experiment = f"prefect-{flow_run.name}"
    shown = run(deployed, "dvc", "exp", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    runs = [e for commit in json.loads(shown.stdout) for e in commit.get("experiments") or []
            for e in e.get("revs", []) if e.get("name") == experiment]
    assert len(runs) == 1, shown.stdout[:3000]
    params = runs[0]["data"]["params"]["params.yaml"]["data"]
    assert params["promote"]["max_forgetting"] == 9.0  # the UI's settings, recorded by DVC

    with get_client(sync_client=True) as client:
        artifacts = {a.key for a in client.read_artifacts() if a.created.timestamp() >= started - 1}
    assert {"promotion-decision", "specialize-run"} <= artifacts  # evaluate's report: no evaluate this time

    # Promoted, so the results were pushed: the default remote now holds the production model's files.
    assert json.loads((deployed / "reports/promotion.json").read_text())["promoted"] is True
    status = run(deployed, "dvc", "status", "--cloud", "--json")
    assert status.returncode == 0 and json.loads(status.stdout or "{}") == {}, status.stdout[-2000:]


def test_scheduled_run_with_nothing_changed_finishes_quickly(deployed: Path) -> None:
    flow_run = run_deployment("specialize/weekly", timeout=300)
    log = flow_run_log(flow_run.id)
    assert flow_run.state.is_completed(), f"{flow_run.state}\n{log[-3000:]}"
    assert "nothing changed since the last run" in log and "dvc exp run" not in log, log[-3000:]


def pipeline_processes(root: Path) -> list[str]:
    """dvc and stage processes still running in root."""
    found = []
    for process in psutil.process_iter(["cmdline", "cwd"]):
        with contextlib.suppress(psutil.Error):
            command = " ".join(process.info["cmdline"] or [])
            if process.info["cwd"] == str(root) and ("dvc" in command or "flows." in command):
                found.append(command)
    return found


def test_cancelling_a_run_from_the_ui_stops_every_process_and_leaves_it_resumable(deployed: Path) -> None:
    """What the UI's Cancel does: the run is set to Cancelling; the worker ends its process, whose SIGTERM reaches
    `dvc exp run` and the training stage, which stops at a step boundary."""
    flow_run = run_deployment("specialize/weekly", parameters={"max_steps": 400, "push": False},
                              timeout=0)
    checkpoints = deployed / "models/checkpoints"
    deadline = time.monotonic() + 600
    while not any(checkpoints.glob("checkpoint-*/tailor-complete")) or not \
            (deployed / "reports/training/plots/metrics/loss.tsv").is_file():
        assert time.monotonic() < deadline, "the run never reached its first checkpoint"
        time.sleep(0.5)
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run.id, Cancelling(), force=True)
        while not client.read_flow_run(flow_run.id).state.is_final():
            assert time.monotonic() < deadline + 120, "the run did not end after cancelling"
            time.sleep(1)
        assert client.read_flow_run(flow_run.id).state.is_cancelled()
    stop_deadline = time.monotonic() + 30
    while pipeline_processes(deployed) and time.monotonic() < stop_deadline:
        time.sleep(0.5)
    assert pipeline_processes(deployed) == []
    assert all((c / "tailor-complete").is_file() for c in checkpoints.glob("checkpoint-*"))  # none half-written
    status = run(deployed, "dvc", "status", "--json")  # DVC's lock was released: the workspace can run again
    assert status.returncode == 0, status.stderr
