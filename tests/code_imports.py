"""What a module of this repository imports when it runs (tests/test_dvc_yaml.py's stage dependencies and
tests/test_structure.py's import circles read it): `from flows.x import name`, `from tasks.a.b import name` and
`from tasks.a import b` (a package's module); imports under `if TYPE_CHECKING:` never run and do not count."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def module_file(module: str) -> Path:
    return REPO / (module.replace(".", "/") + ".py")


def imported_names(module: str) -> list[tuple[str, str]]:
    """(module, name) for every `from module import name` of this repository's code that runs."""
    tree = ast.parse(module_file(module).read_text())
    typing_only = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If) and isinstance(node.test, ast.Name)
                   and node.test.id == "TYPE_CHECKING" for stmt in node.body for inner in ast.walk(stmt)}
    return [(node.module, alias.name) for node in ast.walk(tree) if id(node) not in typing_only
            and isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("flows", "tasks")
            for alias in node.names]


def imported_modules(module: str) -> set[str]:
    """The repository's modules this one imports directly."""
    found = set()
    for source, name in imported_names(module):
        found |= {m for m in (source, f"{source}.{name}") if module_file(m).is_file()}
    return found
