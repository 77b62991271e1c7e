"""tailor sweep: trials of params.yaml's knobs as DVC experiments, each scored on the dev split; the best one's knobs
written into params.yaml, for `dvc repro promote` to score it once on the test split and take it through the gates.

Each trial is `dvc exp run --queue -S evaluate.split=dev -S <its knobs> evaluate`, run by DVC's experiment queue
(`dvc exp run --run-all`) in a clean copy of the repository, so every trial is a reproducible experiment: `dvc exp
show` lists them, `dvc exp apply` restores one. The search is a grid (every combination of listed values) or, for a
space too large for one, Optuna's TPE sampler, seeded by params' seed: it asks for a batch of settings, DVC runs
them, Optuna is told their dev scores. The choice is the best dev score; the table and plot give each trial's
interval, so a winner inside the runner-up's interval reads as what it is. Only tokenize and finetune knobs are
swept: a data, validate or evaluate knob would change what the trials are scored on, so their scores would not
compare. `dvc repro promote` after the sweep restores the chosen trial's training from DVC's run cache (same
inputs), and the report says how many configurations were compared on dev (evaluate.configurations_compared).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks.core.approaches import FINETUNED
from tasks.core.dag import declared_paths
from tasks.core.errors import UserError
from tasks.core.metrics import lower_is_better, task_metrics
from tasks.core.params import PARAMS_FILE, Params, describe_error, parse_params

SWEPT_SECTIONS = ("tokenize", "finetune")


class Span(BaseModel):
    """An Optuna range: floats unless low and high are both integers; log for a log-uniform draw."""

    model_config = ConfigDict(extra="forbid")
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def ordered(self) -> Span:
        if not self.low < self.high or (self.log and self.low <= 0):
            raise ValueError(f"low ({self.low}) must be below high ({self.high}), and above 0 with log")
        return self


class SweepSpec(BaseModel):
    """A sweep file: what to vary, how to search, what to maximize (docs/sweeps.md)."""

    model_config = ConfigDict(extra="forbid")
    search: Literal["grid", "optuna"] = Field("grid", description="grid: every combination of the listed values; "
                                                                  "optuna: `trials` settings drawn by TPE")
    trials: int = Field(10, ge=1, le=1000, description="optuna: settings tried in all")
    batch: int = Field(1, ge=1, le=64, description="optuna: settings asked for, then run by DVC, at a time")
    metric: str | None = Field(None, description="the fine-tuned model's dev metric chosen on; default promote.metric")
    params: dict[str, list[Any] | Span] = Field(min_length=1, description="a params.yaml key (dotted) -> values "
                                                                          "(a list) or, with optuna, {low, high, log}")

    @model_validator(mode="after")
    def searchable(self) -> SweepSpec:
        for key, values in self.params.items():
            if key.split(".")[0] not in SWEPT_SECTIONS:
                raise ValueError(f"params.{key}: only {' and '.join(SWEPT_SECTIONS)} knobs are swept; other sections "
                                 "change the data or how the trials are scored, so their dev scores would not compare")
            if isinstance(values, list) and not values:
                raise ValueError(f"params.{key}: list at least one value")
            if isinstance(values, Span) and self.search == "grid":
                raise ValueError(f"params.{key}: a grid lists its values; a range needs search: optuna")
        return self


@dataclass(frozen=True)
class Trial:
    name: str
    settings: dict[str, Any]
    value: float | None = None  # None: the trial failed
    low: float | None = None
    high: float | None = None


def set_dotted(document: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted params key (finetune.lora.r) in a params.yaml document, plain or ruamel's commented one."""
    *parents, last = key.split(".")
    place = document
    for part in parents:
        place = place.setdefault(part, {})
        if not isinstance(place, dict):
            raise UserError(f"sweep params.{key}: {part} is not a section of params.yaml")
    place[last] = value


def with_settings(raw: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """A copy of params.yaml's content with dotted keys set."""
    changed = json.loads(json.dumps(raw))
    for key, value in settings.items():
        set_dotted(changed, key, value)
    return changed


def checked_params(raw: dict[str, Any], settings: dict[str, Any]) -> Params:
    """The params a trial runs with, validated before any trial starts (a bad value stops the sweep, not a trial)."""
    try:
        return Params.model_validate(with_settings(raw, settings))
    except ValidationError as exc:
        raise UserError(f"sweep setting {settings}: " + "; ".join(describe_error(e) for e in exc.errors())) from None


def grid(spec: SweepSpec) -> list[dict[str, Any]]:
    keys = list(spec.params)
    return [dict(zip(keys, values)) for values in itertools.product(*(spec.params[k] for k in keys))]


def suggest(trial: Any, spec: SweepSpec) -> dict[str, Any]:
    """An Optuna trial's settings: a list is a categorical choice, a span a uniform or log-uniform draw."""
    settings = {}
    for key, values in spec.params.items():
        if isinstance(values, list):
            settings[key] = values[trial.suggest_categorical(key, list(range(len(values))))]
        elif values.low.is_integer() and values.high.is_integer():
            settings[key] = trial.suggest_int(key, int(values.low), int(values.high), log=values.log)
        else:
            settings[key] = trial.suggest_float(key, values.low, values.high, log=values.log)
    return settings


def run_dvc(root: Path, *args: str) -> int:
    """A DVC command in root, its output shown as it runs."""
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, stdout=sys.stderr).returncode


def tracked(root: Path, path: Path) -> bool:
    listed = subprocess.run(["git", "ls-files", "--error-unmatch", str(path)], cwd=root, capture_output=True)
    return listed.returncode == 0 or (root / f"{path}.dvc").exists()


def waiting_experiments(root: Path) -> list[str]:
    """The experiments already queued or running in root, which `dvc exp run --run-all` would run with the trials."""
    status = subprocess.run([sys.executable, "-m", "dvc", "queue", "status"], cwd=root, capture_output=True,
                            text=True)
    return [line.split()[1] for line in status.stdout.splitlines() if line.split()[-1:] in (["Queued"], ["Running"])]


def run_trials(root: Path, batch: list[tuple[str, dict[str, Any]]], metric: str) -> list[Trial]:
    """Queue each trial as a DVC experiment of the evaluate stage on the dev split, run the queue, read the scores."""
    for name, settings in batch:
        sets = [arg for key, value in {"evaluate.split": "dev", **settings}.items()
                for arg in ("-S", f"{key}={json.dumps(value)}")]
        if run_dvc(root, "exp", "run", "--queue", "--name", name, *sets, "evaluate") != 0:
            raise UserError(f"dvc exp run --queue refused trial {name}; see DVC's message above")
    run_dvc(root, "exp", "run", "--run-all", "--jobs", "1")  # a failed trial is told by its missing score
    import dvc.api  # DVC's Python API: only once the trials ran

    revs = {row["Experiment"]: row["rev"] for row in dvc.api.exp_show(repo=str(root))
            if row.get("Experiment") and row.get("State") == "Success"}
    metrics_path = declared_paths("evaluate")["metrics"].as_posix()
    trials = []
    for name, settings in batch:
        if name not in revs:
            trials.append(Trial(name, settings))
            continue
        scored = json.loads(dvc.api.read(metrics_path, repo=str(root), rev=revs[name]))[FINETUNED]
        trials.append(Trial(name, settings, scored[metric], scored[f"{metric}_ci_low"], scored[f"{metric}_ci_high"]))
    return trials


def best(trials: list[Trial], metric: str) -> Trial:
    scored = [t for t in trials if t.value is not None]
    if not scored:
        raise UserError("no trial finished: `dvc queue logs <trial name>` shows why; "
                        f"the trials: {', '.join(t.name for t in trials)}")
    return (min if lower_is_better(metric) else max)(scored, key=lambda t: t.value)


def table(trials: list[Trial], chosen: Trial, metric: str) -> str:
    keys = list(chosen.settings)
    lines = [f"| trial | {' | '.join(keys)} | dev {metric} [interval] |", "|" + "---|" * (len(keys) + 2)]
    for t in trials:
        score = "failed" if t.value is None else f"{t.value:.4g} [{t.low:.4g}, {t.high:.4g}]"
        mark = " **chosen**" if t is chosen else ""
        lines.append(f"| {t.name}{mark} | " + " | ".join(str(t.settings[k]) for k in keys) + f" | {score} |")
    return "\n".join(lines)


def plot(trials: list[Trial], chosen: Trial, metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [t for t in trials if t.value is not None]
    figure, axes = plt.subplots(figsize=(max(4.0, 1.2 * len(scored)), 3.5))
    for x, t in enumerate(scored):
        axes.errorbar(x, t.value, yerr=[[t.value - t.low], [t.high - t.value]], fmt="o", capsize=4,
                      color="tab:green" if t is chosen else "tab:blue")
    axes.set_xticks(range(len(scored)), ["\n".join(f"{k.split('.')[-1]}={v}" for k, v in t.settings.items())
                                         for t in scored], fontsize=7)
    axes.set_ylabel(f"dev {metric} (fine-tuned)")
    axes.set_title("Sweep trials on the dev split (green: chosen)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def apply_choice(params_file: Path, settings: dict[str, Any], compared: int) -> None:
    """Write the chosen knobs and the number of configurations compared into params.yaml, its comments kept."""
    from ruamel.yaml import YAML

    yaml_rt = YAML()
    yaml_rt.width = 4096  # never re-wrap a line
    yaml_rt.preserve_quotes = True
    document = yaml_rt.load(params_file.read_text(encoding="utf-8"))
    for key, value in {**settings, "evaluate.configurations_compared": compared}.items():
        set_dotted(document, key, value)
    with params_file.open("w", encoding="utf-8") as out:
        yaml_rt.dump(document, out)


def sweep(spec_file: Path, root: Path = Path(), repro: bool = True) -> int:
    """Run the sweep of spec_file; write reports/sweep.{md,json,png}; apply the choice; with repro, build it."""
    try:
        spec = SweepSpec.model_validate(yaml.safe_load(spec_file.read_text(encoding="utf-8")) or {})
    except OSError as exc:
        raise UserError(f"{spec_file}: cannot read it ({exc.strerror})") from None
    except ValidationError as exc:
        raise UserError(f"{spec_file}: " + "; ".join(describe_error(e) for e in exc.errors())) from None
    params_file = root / PARAMS_FILE
    raw = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    params = parse_params(raw)
    if params.data.dev_pct == 0:
        raise UserError("a sweep chooses on the dev split, and there is none: set data.dev_pct in params.yaml (e.g. "
                        "10) to carve one from train, commit, and run tailor sweep again")
    metric = spec.metric or params.promote.metric
    if metric not in task_metrics(params.task()):
        raise UserError(f"{spec_file}: metric {metric} is not one evaluate.task {params.evaluate.task} reports; "
                        f"choose one of {task_metrics(params.task())}")
    for path in (params.data.train, params.data.eval):
        if not tracked(root, path):
            raise UserError(f"data: {path} is tracked by neither git nor DVC, and each trial runs in a clean copy of "
                            f"the repository, which has only tracked files: `dvc add {path}`, commit the .dvc file, "
                            "and run tailor sweep again")
    waiting = waiting_experiments(root)
    if waiting:
        raise UserError(f"DVC's queue already holds {', '.join(waiting)}, which would run with the trials: run them "
                        "(dvc exp run --run-all) or drop them (dvc queue remove --queued), then tailor sweep again")
    # What every trial shares, built once here: the trials start from this workspace (its dvc.lock included), and
    # DVC's run cache skips no stage with a persisted output (base_model, validate).
    if run_dvc(root, "repro", "base_model", "validate") != 0:
        raise UserError("dvc repro base_model validate failed (above), and every trial would fail the same way")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    names = (f"{spec_file.stem}-{stamp}-{n}" for n in itertools.count(1))
    trials: list[Trial] = []
    if spec.search == "grid":
        settings = grid(spec)
        for each in settings:
            checked_params(raw, each)
        trials = run_trials(root, [(next(names), each) for each in settings], metric)
    else:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        direction = "minimize" if lower_is_better(metric) else "maximize"
        study = optuna.create_study(direction=direction, sampler=optuna.samplers.TPESampler(seed=params.seed))
        while len(trials) < spec.trials:
            asked = [study.ask() for _ in range(min(spec.batch, spec.trials - len(trials)))]
            batch = [(next(names), suggest(trial, spec)) for trial in asked]
            for _, each in batch:
                checked_params(raw, each)
            for trial, result in zip(asked, run_trials(root, batch, metric)):
                if result.value is None:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(trial, result.value)
                trials.append(result)
    chosen = best(trials, metric)
    compared = sum(t.value is not None for t in trials)
    reports = root / "reports"
    reports.mkdir(exist_ok=True)
    summary = (f"# Sweep {spec_file.name}: {compared} configurations compared on dev\n\n"
               f"Chosen on the fine-tuned model's dev {metric}: {chosen.name} {chosen.settings}. Its test score comes "
               f"from `dvc repro promote` (reports/specialization.md), once.\n\n{table(trials, chosen, metric)}\n")
    (reports / "sweep.md").write_text(summary, encoding="utf-8")
    (reports / "sweep.json").write_text(json.dumps({
        "metric": metric, "search": spec.search, "chosen": chosen.name, "configurations_compared": compared,
        "trials": [t.__dict__ for t in trials]}, indent=2) + "\n", encoding="utf-8")
    plot(trials, chosen, metric, reports / "sweep.png")
    apply_choice(params_file, chosen.settings, compared)
    print(summary, file=sys.stderr)
    print(f"tailor: params.yaml now has {chosen.settings} and evaluate.configurations_compared: {compared}",
          file=sys.stderr)
    if not repro:
        return 0
    return run_dvc(root, "repro", "promote")  # this specialization, not a portfolio/dvc.yaml beside it
