"""How every benchmark shows its figures: a short aligned table on stdout and the same figures as JSON."""

from __future__ import annotations

import json
import platform
from datetime import date
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def hardware() -> str:
    """The machine in words, so a result file says where its numbers come from."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, {torch.get_num_threads()} CPU threads"
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads, no GPU"


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_table(title: str, columns: list[str], rows: dict[str, dict[str, Any]]) -> None:
    """One row per arm, one column per figure, aligned."""
    cells = [[name] + [fmt(values.get(c, "")) for c in columns] for name, values in rows.items()]
    header = [""] + columns
    widths = [max(len(row[i]) for row in [header] + cells) for i in range(len(header))]
    print(f"\n{title}")
    for row in [header] + cells:
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))


def print_goals(goals: dict[str, tuple[Any, str, bool]]) -> None:
    """Each headline figure beside its goal and whether it is met."""
    for name, (value, goal, met) in goals.items():
        print(f"  {name}: {fmt(value)}   goal {goal}   {'met' if met else 'NOT met'}")


def write_json(path: Path, result: dict[str, Any]) -> Path:
    """The result with the date and hardware it was measured on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"date": date.today().isoformat(), "hardware": hardware(), **result}
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {path}")
    return path
