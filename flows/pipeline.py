"""The whole pipeline as one Prefect flow, for the deployment and schedule in prefect.yaml.

DVC owns the DAG, so this flow does not re-implement it: it checks whether the data, params or code changed
since the last run, runs the pipeline as a DVC experiment (`dvc exp run -S ...`, so a run started from the
Prefect UI shows in `dvc exp show`), and pushes a promoted model to the DVC remote.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.stage import git_revision
from tasks.dag import declared_paths
from tasks.errors import UserError
from tasks.lineage import dvc_status
from tasks.params import PARAMS_FILE, load_params
from tasks.retries import TRANSIENT_RETRIES


def dvc(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a DVC command with this interpreter's DVC, its output streamed into the flow's log."""
    logger = get_run_logger()
    process = subprocess.Popen([sys.executable, "-m", "dvc", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout or []:
        lines.append(line.rstrip())
        logger.info(line.rstrip())
    return subprocess.CompletedProcess(process.args, process.wait(), "\n".join(lines), "")


def settings_from(learning_rate: float | None, max_steps: int | None, lora_r: int | None,
                  settings: list[str]) -> list[str]:
    """The form's fields and free `key=value` settings as `dvc exp run -S` arguments."""
    fields = {"finetune.learning_rate": learning_rate, "finetune.max_steps": max_steps, "finetune.lora.r": lora_r}
    return [f"{key}={value}" for key, value in fields.items() if value is not None] + list(settings)


@task(cache_policy=NO_CACHE)
def check_settings(settings: list[str]) -> None:
    """Apply the settings to a copy of params.yaml exactly as `dvc exp run -S` will (DVC's own Hydra override
    parser), then validate the result, so a bad setting or value stops here with the key named."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides

    with tempfile.TemporaryDirectory(prefix="tailor-settings-") as work:
        trial = Path(work) / PARAMS_FILE.name
        shutil.copyfile(PARAMS_FILE, trial)
        try:
            apply_overrides(trial, settings)
        except InvalidArgumentError as exc:
            cause = f": {exc.__cause__}" if exc.__cause__ else ""
            raise UserError(f"settings {settings} are not valid `dvc exp run -S` overrides{cause} (for example "
                            "finetune.learning_rate=0.001; a new key needs a leading +)") from None
        try:
            load_params(trial)
        except UserError as exc:
            raise UserError(str(exc).replace(str(trial), f"{PARAMS_FILE} with {', '.join(settings)}", 1)) from None


@task(**TRANSIENT_RETRIES)
def pending_changes() -> dict[str, Any]:
    """What `dvc status` says changed since the last run: empty when the outputs match the data, params and code."""
    return dvc_status()


@task(cache_policy=NO_CACHE)
def run_experiment(name: str, settings: list[str]) -> None:
    """`dvc exp run`: the whole DAG, re-running only what changed, recorded as experiment `name`."""
    args = ["exp", "run", "--name", name]
    for setting in settings:
        args += ["--set-param", setting]
    result = dvc(*args)
    if result.returncode != 0:
        raise UserError(f"the pipeline failed in experiment {name}:\n" + "\n".join(result.stdout.splitlines()[-15:]))


@task(**{**TRANSIENT_RETRIES, "retries": 3, "retry_delay_seconds": 20})
def push_to_remote() -> None:
    """`dvc push`: data, tokenized set, checkpoints, adapter and production model to the default remote."""
    pushed = dvc("push")
    if pushed.returncode != 0:  # remotes fail transiently: a CalledProcessError is retried
        raise subprocess.CalledProcessError(pushed.returncode, pushed.args, pushed.stdout)


@flow(name="specialize")
def specialize(learning_rate: float | None = None, max_steps: int | None = None, lora_r: int | None = None,
               settings: list[str] | None = None, force: bool = False, push: bool = True) -> dict[str, Any]:
    """Run the specialization pipeline as a DVC experiment when anything changed; push a promoted model.

    Args:
        learning_rate: finetune.learning_rate for this run (empty: params.yaml's).
        max_steps: finetune.max_steps for this run (empty: params.yaml's).
        lora_r: finetune.lora.r for this run (empty: params.yaml's).
        settings: more params as key=value, e.g. evaluate.max_examples=32 (as `dvc exp run -S` takes them).
        force: run the pipeline even when nothing changed since the last run.
        push: `dvc push` the results when the model is promoted.
    """
    logger = get_run_logger()
    overrides = settings_from(learning_rate, max_steps, lora_r, settings or [])
    check_settings(overrides)
    changes = pending_changes()
    if not changes and not overrides and not force:
        logger.info("nothing changed since the last run (data, params and code match dvc.lock); not retraining")
        return {"ran": False, "reason": "nothing changed since the last run"}
    logger.info("running the pipeline: %s", ", ".join(overrides) or f"changed since the last run: {sorted(changes)}")
    name = f"prefect-{flow_run.get_name()}"
    run_experiment(name, overrides)
    promoted = declared_paths("promote")
    decision = json.loads(promoted["decision"].read_text(encoding="utf-8"))
    metric = decision["metric"]
    finetuned = json.loads(promoted["metrics"].read_text(encoding="utf-8"))["finetuned"].get(metric)
    if decision["promoted"] and push:
        push_to_remote()
    summary = {"ran": True, "experiment": name, "settings": overrides, "git_revision": git_revision(),
               "promoted": decision["promoted"], "reason": decision["reason"], metric: finetuned,
               "pushed": decision["promoted"] and push}
    create_markdown_artifact(
        key="specialize-run",
        markdown="## Specialization run\n\n" + "\n".join(f"- **{k}**: {v}" for k, v in summary.items())
        + f"\n\nCompare with other runs: `dvc exp show`; this one is `{name}`.",
        description=f"{name}: {'promoted' if decision['promoted'] else 'not promoted'}",
    )
    return summary
