"""dvc.yaml lists, for every stage, exactly the code its command runs: otherwise a code change would not
re-run the stage (a missing file) or would re-run it for nothing (an extra one)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def code_files(module: str, found: set[str] | None = None) -> set[str]:
    """The module's file and every flows/ or tasks/ file it imports, transitively."""
    found = found if found is not None else set()
    path = module.replace(".", "/") + ".py"
    found.add(path)
    for node in ast.walk(ast.parse((REPO / path).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("flows", "tasks"):
            imported = node.module.replace(".", "/") + ".py"
            if (REPO / imported).is_file() and imported not in found:
                code_files(node.module, found)
    return found


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_list_exactly_its_code(stage: str) -> None:
    module = STAGES[stage]["cmd"].split()[-1]
    deps = {d if isinstance(d, str) else next(iter(d)) for d in STAGES[stage]["deps"]}
    assert {d for d in deps if d.endswith(".py")} == code_files(module)
