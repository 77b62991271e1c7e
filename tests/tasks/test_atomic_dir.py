"""write_dir_atomically: a new version replaces the old whole; a failed write changes nothing and leaves nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.core.atomic_dir import staging_dir, write_dir_atomically


def version(text: str):
    def write(staging: Path) -> None:
        staging.mkdir()
        (staging / "weights").write_text(text)
    return write


def test_a_failed_write_leaves_the_old_version_and_no_staging_directory(tmp_path: Path) -> None:
    target = tmp_path / "production"
    write_dir_atomically(target, version("v1"))
    write_dir_atomically(target, version("v2"))
    assert (target / "weights").read_text() == "v2"

    def fails(staging: Path) -> None:
        version("v3")(staging)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_dir_atomically(target, fails)
    assert (target / "weights").read_text() == "v2"
    assert not staging_dir(target).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["production"]
