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
from typing import Any, get_args

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import BaseModel

from flows.stage import git_revision
from tasks.core.dag import PIPELINE, declared_paths, dvc_target, enable_portfolio
from tasks.core.errors import UserError
from tasks.core.params import PARAMS_FILE, Params, load_params
from tasks.core.retries import TRANSIENT_RETRIES
from tasks.release.lineage import dvc_status


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


# What a run's `settings` may change: the stages' knobs, under these sections of params.yaml (or of one
# specialization's). Whoever can start a deployment run (the Prefect form, its API) must not choose the base model
# (a Hub repository's Python runs with `trust_remote_code`), the data, or any other file the worker would read.
FORM_SECTIONS = frozenset({"seed", "validate", "tokenize", "finetune", "baselines", "evaluate", "promote"})


def setting_key(setting: str) -> str:
    """The dotted key of a `dvc exp run -S` override: `+a.b=1`, `++a.b=1`, `~a.b` all name `a.b`."""
    return setting.split("=", 1)[0].lstrip("+~").strip()


def form_may_set(key: str) -> bool:
    """Whether a run's settings may change `key`: a knob of FORM_SECTIONS whose value is not a file path (a key the
    schema does not know passes here, and its validation then names it)."""
    parts = key.split(".")
    if parts[0] == "specializations" and len(parts) > 2:
        parts = parts[2:]  # specializations.<name>.<section>...: the same sections as the top level
    if parts[0] not in FORM_SECTIONS:
        return False
    model: Any = Params
    for part in parts:
        fields = {field.alias or name: field for name, field in model.model_fields.items()}
        if part not in fields:
            return True
        annotation = fields[part].annotation
        if Path in (annotation, *get_args(annotation)):
            return False
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return True
        model = annotation
    return True


@task(cache_policy=NO_CACHE)
def check_settings(settings: list[str]) -> None:
    """Apply the settings to a copy of params.yaml exactly as `dvc exp run -S` will (DVC's own Hydra override
    parser), then validate the result, so a bad setting or value stops here with the key named."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides

    refused = [setting for setting in settings if not form_may_set(setting_key(setting))]
    if refused:
        raise UserError(f"settings {refused} cannot be changed from a deployment run: a run may tune the "
                        f"{', '.join(sorted(FORM_SECTIONS))} sections, not the base model (its source, repository, "
                        "revision, remote code), the data or any file path; edit params.yaml in the repository")
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


def targets(specializations: list[str] | None, params: Params) -> list[str]:
    """The DVC targets a run asks for: none named, your own specialization (dvc.yaml, as a plain `dvc repro`); or
    the promotion of each named specialization of the portfolio, which DVC builds with everything it needs and
    nothing else."""
    if specializations is None:
        return [str(PIPELINE)]
    unknown = sorted(set(specializations) - set(params.specializations))
    if unknown or not specializations:
        raise UserError(f"specializations {unknown or '[]'}: name some of params.yaml's "
                        f"{sorted(params.specializations) or 'specializations (it has none)'}, or leave the "
                        "parameter empty to run your own specialization (dvc.yaml)")
    return [dvc_target("portfolio_promote", name) for name in specializations]


@task(**TRANSIENT_RETRIES)
def pending_changes(stages: list[str]) -> dict[str, Any]:
    """What `dvc status` says changed since the last run: empty when the outputs match the data, params and code."""
    return dvc_status(stages)


@task(cache_policy=NO_CACHE)
def run_experiment(name: str, settings: list[str], stages: list[str]) -> None:
    """`dvc exp run` of `stages`, re-running only what changed, recorded as experiment `name`."""
    args = ["exp", "run", "--name", name, *stages]
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


def outcome(stage: str, key: str | None = None) -> dict[str, Any]:
    """A promotion stage's decision: the approach it shipped (or refused), and that approach's value of the metric
    it was decided on."""
    paths = declared_paths(stage, key)
    decision = json.loads(paths["decision"].read_text(encoding="utf-8"))
    metrics = json.loads(paths["metrics"].read_text(encoding="utf-8"))
    approach = decision["approach"]
    return {"promoted": decision["promoted"], "approach": approach, "reason": decision["reason"],
            decision["metric"]: metrics[approach].get(decision["metric"])}


@flow(name="specialize")
def specialize(learning_rate: float | None = None, max_steps: int | None = None, lora_r: int | None = None,
               settings: list[str] | None = None, specializations: list[str] | None = None, force: bool = False,
               push: bool = True) -> dict[str, Any]:
    """Run the specialization pipeline as a DVC experiment when anything changed; push a promoted model.

    Args:
        learning_rate: finetune.learning_rate for this run (empty: params.yaml's).
        max_steps: finetune.max_steps for this run (empty: params.yaml's).
        lora_r: finetune.lora.r for this run (empty: params.yaml's).
        settings: more params as key=value, e.g. evaluate.max_examples=32 (as `dvc exp run -S` takes them).
        specializations: these of params.yaml's portfolio, each up to its promotion (empty: your own
            specialization, the stages of dvc.yaml, as a plain `dvc repro` runs them).
        force: run the pipeline even when nothing changed since the last run.
        push: `dvc push` the results when a model is promoted.
    """
    logger = get_run_logger()
    overrides = settings_from(learning_rate, max_steps, lora_r, settings or [])
    check_settings(overrides)
    stages = targets(specializations, load_params())
    if specializations is not None:
        enable_portfolio()
    changes = pending_changes(stages)
    if not changes and not overrides and not force:
        logger.info("nothing changed since the last run (data, params and code match dvc.lock); not retraining")
        return {"ran": False, "reason": "nothing changed since the last run"}
    logger.info("running %s: %s", "the pipeline" if specializations is None else ", ".join(stages),
                ", ".join(overrides) or f"changed since the last run: {sorted(changes)}")
    name = f"prefect-{flow_run.get_name()}"
    run_experiment(name, overrides, stages)
    outcomes = ({"top-level": outcome("promote")} if specializations is None
                else {name: outcome("portfolio_promote", name) for name in specializations})
    promoted = any(o["promoted"] for o in outcomes.values())
    if promoted and push:
        push_to_remote()
    summary = {"ran": True, "experiment": name, "settings": overrides, "git_revision": git_revision(),
               "promoted": promoted, **({"reason": outcomes["top-level"]["reason"]} if "top-level" in outcomes
                                        else {}), "outcomes": outcomes, "pushed": promoted and push}
    create_markdown_artifact(
        key="specialize-run",
        markdown="## Specialization run\n\n" + "\n".join(f"- **{k}**: {v}" for k, v in summary.items())
        + f"\n\nCompare with other runs: `dvc exp show`; this one is `{name}`.",
        description=f"{name}: {'promoted' if promoted else 'not promoted'}",
    )
    return summary
