"""dvc.yaml is the one declaration of each stage: the code its command runs (a missing file would not re-run the
stage on a change, an extra one would re-run it for nothing) and the paths it reads and writes (given on its
command line, parsed by the flow, and each one a dep or an out)."""

from __future__ import annotations

import importlib
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from code_imports import imported_modules, imported_names, module_file

from benchmarks.harness import copy_repository, environment
from flows.stage import Target, stage_arguments
from tasks.core.dag import PORTFOLIO_STAGES, enable_portfolio

REPO = Path(__file__).resolve().parents[1]
# Your own specialization's stages and the portfolio's. A portfolio stage (foreach over the specializations) is
# checked as DVC would expand it for one named "x".
PIPELINE = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
PORTFOLIO = yaml.safe_load((REPO / PORTFOLIO_STAGES).read_text())
DECLARED = {**PIPELINE, **PORTFOLIO["stages"]}
STAGES = {name: yaml.safe_load(yaml.safe_dump(stage["do"]).replace("${key}", "x")) if "foreach" in stage else stage
          for name, stage in DECLARED.items()}


FORMATS = "tasks/formats"  # a folder dependency: the format modules are loaded by name (tasks/formats/registry.py)


def code_files(module: str, found: set[str] | None = None) -> set[str]:
    """The module's file and every flows/ or tasks/ file it imports, transitively; the formats folder, for code that
    loads a format by its name."""
    found = found if found is not None else set()
    found.add(str(module_file(module).relative_to(REPO)))
    if ("tasks.formats.registry", "format_of") in imported_names(module) and FORMATS not in found:
        found.add(FORMATS)
        for format_module in sorted((REPO / FORMATS).glob("*.py")):
            code_files(".".join(format_module.relative_to(REPO).with_suffix("").parts), found)
    for imported in imported_modules(module):
        if str(module_file(imported).relative_to(REPO)) not in found:
            code_files(imported, found)
    return found


def command(stage: str) -> tuple[str, list[str]]:
    """The stage's module and its command-line arguments."""
    words = shlex.split(STAGES[stage]["cmd"])
    assert words[:2] == ["python", "-m"], words
    return words[2], words[3:]


def declared(stage: str, *kinds: str) -> set[str]:
    return {e if isinstance(e, str) else next(iter(e)) for kind in kinds for e in STAGES[stage].get(kind, [])}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_list_exactly_its_code(stage: str) -> None:
    module, _ = command(stage)
    code = code_files(module)
    # A folder dependency stands for every file in it.
    assert {d for d in declared(stage, "deps") if d.endswith(".py") or d == FORMATS} == \
        {f for f in code if f == FORMATS or not f.startswith(FORMATS + "/") or FORMATS not in code}


# What stages write but do not declare as outputs, since no re-run would rebuild it byte for byte (dvc.yaml's header):
# the machine's timings, Data Docs (stamped with the time they were rendered) and resumable checkpoints.
UNDECLARED = {"timings", "docs", "checkpoints"}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_paths_are_its_deps_and_outs_and_the_flow_reads_them_all(stage: str) -> None:
    module, args = command(stage)
    paths, target = stage_arguments(importlib.import_module(module).Paths, args)  # no field missing or unknown
    # A stage run per specialization is told which; one per multi-task model, which model.
    foreach = DECLARED[stage].get("foreach")
    assert target == {None: Target(), "${specializations}": Target(specialization="x"),
                      "${multitask}": Target(multitask="x")}[foreach]
    given = {str(value) for field, value in vars(paths).items() if field not in UNDECLARED}
    assert "locks" in declared(stage, "deps")  # the environment: an upgrade re-runs what it may change
    data_deps = {d for d in declared(stage, "deps") - {"locks", FORMATS} if not d.endswith(".py") and not d.startswith("${")}
    outs = declared(stage, "outs", "metrics", "plots")
    assert given <= data_deps | outs, given - data_deps - outs
    undeclared = {str(value) for field, value in vars(paths).items() if field in UNDECLARED}
    assert not undeclared & outs, undeclared & outs  # a re-run would not rebuild them byte for byte
    assert data_deps | outs <= given, (data_deps | outs) - given  # nothing declared that the flow does not use


def test_a_plain_dvc_repro_runs_your_own_specialization_and_the_portfolio_runs_from_the_repository_root() -> None:
    """dvc.yaml holds the seven stages of your own specialization only; the portfolio's stages (one run per
    specialization or multi-task model) are in portfolio/stages.yaml, opt-in, where each runs from the repository root
    on the one params.yaml, so that its paths and params keys read as the top-level ones."""
    assert not any("foreach" in stage for stage in PIPELINE.values())
    assert not set(PIPELINE) & set(PORTFOLIO["stages"])
    assert PORTFOLIO["vars"] == ["../params.yaml"]
    assert all("foreach" in stage and stage["do"]["wdir"] == ".." for stage in PORTFOLIO["stages"].values())


def test_a_clone_that_never_built_the_portfolio_is_not_asked_for_its_outputs() -> None:
    """`dvc pull` fetches every cached output dvc.lock records: the demo portfolio's, cached, would make a fresh
    clone's `dvc pull` fail on outputs nobody pushed. They are recorded (hashes) but not cached."""
    for name, stage in PORTFOLIO["stages"].items():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage["do"].get(kind, []):
                assert isinstance(entry, dict) and next(iter(entry.values()))["cache"] is False, (name, entry)
    assert all(isinstance(entry, str) or next(iter(entry.values())).get("cache", True)
               for stage in PIPELINE.values() for kind in ("outs", "metrics", "plots") for entry in stage.get(kind, []))


def test_a_fresh_clone_s_dvc_status_names_no_portfolio_stage_until_make_portfolio_enables_it(tmp_path: Path) -> None:
    """DVC reads every dvc.yaml of the repository: the portfolio's stages are elsewhere until `make portfolio`
    copies them to portfolio/dvc.yaml, so a clone that never built it hears nothing of it from `dvc status`."""
    root = copy_repository(tmp_path / "repo")

    def status(*targets: str) -> str:
        result = subprocess.run([sys.executable, "-m", "dvc", "status", *targets], cwd=root, capture_output=True,
                                text=True, env=environment())
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    plain = status()
    assert "base_model" in plain and "portfolio_" not in plain
    enable_portfolio(root)
    assert "portfolio_validate@classification" in status("portfolio/dvc.yaml")
