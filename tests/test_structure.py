"""The code's shape a contributor relies on: tasks/ in packages along the pipeline with no import circle, the
approaches named in one module, formats read in tasks/formats only, and each registry (formats, training methods)
equal to the choices the params schema offers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

from code_imports import imported_modules

from tasks.core.params import DataParams, FinetuneParams
from tasks.formats.format import Format
from tasks.formats.registry import FORMATS, format_of
from tasks.train.methods import METHODS

REPO = Path(__file__).resolve().parents[1]
MODULES = [".".join(p.relative_to(REPO).with_suffix("").parts) for p in (REPO / "tasks").rglob("*.py")]


def test_no_import_circle_among_the_tasks_modules() -> None:
    graph = {module: imported_modules(module) for module in MODULES}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path[path.index(module):], module))
        if module not in done:
            for imported in graph[module]:
                visit(imported, (*path, module))
            done.add(module)

    for module in graph:
        visit(module, ())


def test_approach_names_are_literals_in_tasks_core_approaches_only() -> None:
    names = re.compile(r"""["'](generalist|prompted|retrieval|finetuned)["']""")
    spelled = {str(p.relative_to(REPO)) for top in ("tasks", "flows") for p in (REPO / top).rglob("*.py")
               if names.search(p.read_text())}
    assert spelled == {"tasks/core/approaches.py"}


def test_the_schema_offers_exactly_the_registered_training_methods() -> None:
    assert set(get_args(FinetuneParams.model_fields["method"].annotation)) == set(METHODS)


def test_the_schema_offers_exactly_the_registered_formats_and_each_module_provides_one() -> None:
    assert get_args(DataParams.model_fields["format"].annotation) == tuple(FORMATS)
    for name in FORMATS:
        assert isinstance(format_of(name), Format), name


def test_format_names_are_spelled_only_in_tasks_formats_the_schema_and_the_evaluation_tasks() -> None:
    """Later stages ask the canonical shape, never the format. ("text" is a shape and a column as well, and
    "preference" the evaluation task of pairs, whose metrics tasks/core/metrics.py lists.)"""
    names = re.compile(r"""["'](instruction|chat|preference)["']""")
    spelled = {str(p.relative_to(REPO)) for top in ("tasks", "flows") for p in (REPO / top).rglob("*.py")
               if not p.is_relative_to(REPO / "tasks/formats") and names.search(p.read_text())}
    assert spelled <= {"tasks/core/params.py", "tasks/core/metrics.py"}, spelled


def test_the_private_pytest_xdist_api_the_test_scheduler_overrides_is_still_there() -> None:
    """tests/conftest.py's scheduler keeps each work unit on one worker through LoadScopeScheduling's private methods;
    a pytest-xdist release that renames them must fail here, by name, rather than scatter the shared builds."""
    import inspect

    from xdist.scheduler import LoadScopeScheduling

    for name in ("_split_scope", "_reschedule", "_pending_of", "_assign_work_unit"):
        assert callable(getattr(LoadScopeScheduling, name, None)), f"pytest-xdist no longer has {name}"
    assert "self.workqueue" in inspect.getsource(LoadScopeScheduling), "pytest-xdist no longer has workqueue"
