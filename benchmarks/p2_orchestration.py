"""P2: what DVC + Prefect orchestration adds over running each stage's command by hand.

In two fresh temporary copies of the repository (tracked files; base_model points at this checkout's models/base,
so nothing is downloaded; params reduced so a pass takes minutes): time `dvc repro` in one, then a no-op
`dvc repro`; in the other run every stage's command from dvc.yaml by hand, in the order dvc ran them, and sum
their times. Two copies, because a stage run by hand after dvc repro would resume from its checkpoints.

Prefect either starts a temporary server in every stage process (ephemeral: `make run` without
PREFECT_API_URL) or talks to one running server on 127.0.0.1 (server); both arms of a mode share it.

    python -m benchmarks.p2_orchestration [--prefect ephemeral|server|both]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from benchmarks.harness import copy_repository, environment, prefect_server, stages_run
from benchmarks.report import RESULTS_DIR, print_goals, print_table, write_json
from benchmarks.workload import BASE_DIR, REPO

GOAL_RATIO = 1.15
GOAL_NOOP_SECONDS = 2.0
GOAL_PREFECT_SECONDS = 2.0
# Small enough for a pass of minutes on 2 CPU cores; every stage still does its real work on the real model.
REDUCED_PARAMS: dict[str, dict[str, Any]] = {
    "finetune": {"max_steps": 10, "save_steps": 5, "logging_steps": 5},
    "evaluate": {"max_examples": 16, "max_new_tokens": 8, "bootstrap_samples": 100, "forgetting_max_chunks": 8},
    "baselines": {"few_shot_k": 2, "retrieval_k": 2},
    # Gates a 10-step candidate passes: when none is promoted, models/production is missing and dvc repro fails.
    "promote": {"metric": "perplexity", "min_relative_improvement": 0.0, "max_forgetting": 10.0},
}


def new_project(dest: Path) -> Path:
    """A copy of the repository whose base model is this checkout's models/base and whose params are reduced."""
    root = copy_repository(dest)
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    params["base_model"] = {"source": "local", "path": str(BASE_DIR)}
    for section, values in REDUCED_PARAMS.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qam",
                    "benchmark params"], cwd=root, check=True)
    return root


def timed(root: Path, command: str, env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds of one shell command in root, and its stdout; a failure stops the benchmark."""
    started = time.perf_counter()
    done = subprocess.run(command, shell=True, cwd=root, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"`{command}` failed in {root} ({done.returncode}):\n{done.stdout[-3000:]}\n"
                         f"{done.stderr[-3000:]}")
    return seconds, done.stdout


@contextmanager
def prefect_environment(mode: str, home: Path) -> Iterator[dict[str, str]]:
    """The stage processes' environment: their own PREFECT_HOME, and a running server's URL in server mode."""
    env = environment(PREFECT_HOME=str(home), DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    if mode == "ephemeral":
        # One flow run creates the database first, so neither arm pays the one-off migration.
        timed(REPO, f"{sys.executable} -c \"from prefect import flow; flow(name='warm-up')(lambda: None)()\"", env)
        yield env
        return
    with prefect_server(home, env) as url:
        yield {**env, "PREFECT_API_URL": url}


def stage_commands(root: Path) -> dict[str, str]:
    """Each stage's command, as dvc.yaml declares it."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    return {name: stage["cmd"] for name, stage in stages.items()}


def warm_caches(env: dict[str, str]) -> None:
    """Load the libraries and the model file once, so the first timed arm does not pay cold disk reads."""
    timed(REPO, f"{sys.executable} -c 'import transformers, peft, datasets, prefect, great_expectations' && "
                f"cat {BASE_DIR}/model.safetensors > /dev/null", env)


def api(url: str, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST a filter to the Prefect REST API on 127.0.0.1."""
    request = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def start_to_first_task(url: str) -> dict[str, float]:
    """Per stage flow run: seconds from its creation (the flow call) to the start of its first task, the
    overhead Prefect adds before a stage's work begins (median over the runs of each stage)."""
    first_task: dict[str, datetime] = {}
    for task_run in api(url, "/task_runs/filter", {"limit": 200}):
        started = task_run.get("start_time")
        if started and task_run.get("flow_run_id"):
            moment = datetime.fromisoformat(started)
            first_task[task_run["flow_run_id"]] = min(moment, first_task.get(task_run["flow_run_id"], moment))
    delays: dict[str, list[float]] = {}
    for flow_run in api(url, "/flow_runs/filter", {"limit": 200}):
        stage = next((t.split(":", 1)[1] for t in flow_run.get("tags", []) if t.startswith("stage:")), None)
        if stage and flow_run["id"] in first_task:
            created = datetime.fromisoformat(flow_run["created"])
            delays.setdefault(stage, []).append((first_task[flow_run["id"]] - created).total_seconds())
    return {stage: round(statistics.median(values), 3) for stage, values in delays.items()}


def measure(mode: str, work: Path) -> dict[str, Any]:
    """dvc repro, a no-op dvc repro, and the same stages by hand, under one Prefect mode."""
    with prefect_environment(mode, work / f"prefect-{mode}") as env:
        warm_caches(env)
        by_dvc = new_project(work / f"dvc-{mode}")
        repro_seconds, output = timed(by_dvc, "dvc repro", env)
        order = stages_run(output)
        noop_seconds, noop_output = timed(by_dvc, "dvc repro", env)
        by_hand = new_project(work / f"hand-{mode}")
        commands = stage_commands(by_hand)
        stage_seconds = {name: round(timed(by_hand, commands[name], env)[0], 2) for name in order}
        overhead = start_to_first_task(env["PREFECT_API_URL"]) if mode == "server" else {}
    hand_total = sum(stage_seconds.values())
    return {
        "dvc_repro_seconds": round(repro_seconds, 2),
        "stages_by_hand_seconds": round(hand_total, 2),
        "repro_over_hand": round(repro_seconds / hand_total, 3),
        "noop_repro_seconds": round(noop_seconds, 2),
        "noop_ran_nothing": stages_run(noop_output) == [],
        "stage_seconds": stage_seconds,
        "stages": order,
        "prefect_start_to_first_task_seconds": overhead,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefect", choices=["ephemeral", "server", "both"], default="ephemeral")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "p2_orchestration.json")
    args = parser.parse_args()
    modes = ["ephemeral", "server"] if args.prefect == "both" else [args.prefect]
    with tempfile.TemporaryDirectory(prefix="tailor-p2-") as tmp:
        results = {mode: measure(mode, Path(tmp)) for mode in modes}
    print_table("P2 orchestration: full pipeline, reduced params, real model",
                ["dvc_repro_seconds", "stages_by_hand_seconds", "repro_over_hand", "noop_repro_seconds"],
                {f"Prefect {mode}": r for mode, r in results.items()})
    for mode, r in results.items():
        print(f"  stages by hand ({mode}): " + ", ".join(f"{k} {v:.1f}s" for k, v in r["stage_seconds"].items()))
        if r["prefect_start_to_first_task_seconds"]:
            worst = max(r["prefect_start_to_first_task_seconds"].values())
            print("  Prefect flow call to first task: " + ", ".join(
                f"{k} {v:.2f}s" for k, v in r["prefect_start_to_first_task_seconds"].items()))
            print_goals({"Prefect overhead before a stage's first task, worst stage (server)": (
                worst, f"≤ {GOAL_PREFECT_SECONDS:g} s", worst <= GOAL_PREFECT_SECONDS)})
        print_goals({
            f"dvc repro ÷ stages by hand ({mode})": (r["repro_over_hand"], f"≤ {GOAL_RATIO}",
                                                      r["repro_over_hand"] <= GOAL_RATIO),
            f"no-op dvc repro seconds ({mode})": (
                r["noop_repro_seconds"], f"≤ {GOAL_NOOP_SECONDS:g}",
                r["noop_repro_seconds"] <= GOAL_NOOP_SECONDS and r["noop_ran_nothing"]),
        })
    write_json(args.out, {"benchmark": "p2_orchestration", "reduced_params": REDUCED_PARAMS, "modes": results})


if __name__ == "__main__":
    main()
