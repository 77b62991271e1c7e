"""What `tailor serve` takes for a new version of a served directory: every promotion, never an old one."""

from __future__ import annotations

import os
from pathlib import Path

from tasks.atomic_dir import write_dir_atomically
from tasks.serving import ServedModel


def promote(target: Path, weights: bytes) -> None:
    def write(staging: Path) -> None:
        staging.mkdir()
        (staging / "adapter_config.json").write_text("{}", encoding="utf-8")
        (staging / "adapter_model.safetensors").write_bytes(weights)

    write_dir_atomically(target, write)


def test_two_promotions_in_a_row_never_look_like_the_first(tmp_path: Path) -> None:
    """ext4 gives the third version the first one's inode (A, B, A): the fingerprint still tells them apart."""
    served = ServedModel("production", tmp_path / "production")
    assert served.identity() is None
    promote(served.path, b"v1")
    first = served.identity()
    promote(served.path, b"v2")
    second = served.identity()
    promote(served.path, b"v3")
    assert len({first, second, served.identity()}) == 3
    assert served.identity() == served.identity()  # stable while nothing is promoted


def test_an_equal_copy_keeps_its_fingerprint_and_a_changed_byte_does_not(tmp_path: Path) -> None:
    served = ServedModel("production", tmp_path / "production")
    promote(served.path, b"v1")
    before = served.identity()
    weights = served.path / "adapter_model.safetensors"
    stat = weights.stat()
    weights.write_bytes(b"v2")
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same time: the bytes still count
    assert served.identity() != before
