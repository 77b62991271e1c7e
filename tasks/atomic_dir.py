"""Replace an output directory whole: a crash leaves the old complete version or the new one, never a mix."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path


def restore_interrupted(target: Path) -> None:
    """Undo a swap cut off between its two renames: the previous version comes back."""
    previous = target.with_name(target.name + ".old")
    if previous.is_dir() and not target.exists():
        previous.rename(target)
    shutil.rmtree(previous, ignore_errors=True)


def write_dir_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Call write(staging_dir), then swap the staging directory in for target."""
    restore_interrupted(target)
    staging = target.with_name(target.name + ".tmp")
    previous = target.with_name(target.name + ".old")
    shutil.rmtree(staging, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    write(staging)
    if target.exists():
        target.rename(previous)
    staging.rename(target)
    shutil.rmtree(previous, ignore_errors=True)
    return target
