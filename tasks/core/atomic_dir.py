"""Replace an output directory whole: a crash leaves the old complete version or the new one, never a mix."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    renameat2 = getattr(_libc, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # this kernel or filesystem cannot exchange
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def restore_interrupted(target: Path) -> None:
    """Undo a two-rename swap cut off between its renames (where exchange is unsupported): the old one returns."""
    previous = target.with_name(target.name + ".old")
    if previous.is_dir() and not target.exists():
        previous.rename(target)
    shutil.rmtree(previous, ignore_errors=True)


def staging_dir(target: Path) -> Path:
    """Where the next version of target is written before it is swapped in."""
    return target.with_name(target.name + ".tmp")


def sync_tree(folder: Path) -> None:
    """Flush a folder's files and directory entries to disk. Before a swap: without it, a power loss soon after can
    leave the new name holding empty or short files (the rename reaches the disk before the data it names)."""
    for path in [*sorted(folder.rglob("*"), reverse=True), folder]:
        if not path.is_symlink():
            fsync(path)


def fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_dir_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Call write(staging_dir(target)), then swap the staging directory in for target; a write that fails leaves
    target as it was and no staging directory behind."""
    restore_interrupted(target)
    staging = staging_dir(target)
    shutil.rmtree(staging, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        write(staging)
        sync_tree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not target.exists():
        staging.rename(target)
    elif exchange(staging, target):
        shutil.rmtree(staging)  # it now holds the previous version
    else:
        previous = target.with_name(target.name + ".old")
        target.rename(previous)
        staging.rename(target)
        shutil.rmtree(previous)
    fsync(target.parent)  # the swap itself
    return target
