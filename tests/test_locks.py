"""The environment locks (locks/cpu.txt, locks/cuda.txt; `make lock`): made from this pyproject.toml, installed
exactly by `make install`, which refuses a pyproject.toml edited without re-locking."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tasks.release.lineage import environment_lock

REPO = Path(__file__).resolve().parents[1]
LOCKS = ("locks/cpu.txt", "locks/cuda.txt")


def lock_inputs(pyproject: Path) -> str:
    """The digest `make lock` writes on a lock's first line (the Makefile's LOCK_INPUTS)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    inputs = [project["requires-python"], project["dependencies"], project["optional-dependencies"]]
    return hashlib.sha256(json.dumps(inputs).encode()).hexdigest()


def pins(lock: Path) -> dict[str, str]:
    """Package -> version pinned for this machine (the lines whose markers apply here)."""
    found = {}
    for line in lock.read_text().replace("\\\n", " ").splitlines():
        if line and not line.startswith((" ", "#")):
            requirement = Requirement(line.split(" --hash")[0])
            if requirement.marker is None or requirement.marker.evaluate():
                found[canonicalize_name(requirement.name)] = str(requirement.specifier).removeprefix("==")
    return found


@pytest.mark.parametrize("lock", LOCKS)
def test_each_lock_is_made_from_this_pyproject_and_hashes_every_package(lock: str) -> None:
    text = (REPO / lock).read_text()
    assert text.splitlines()[0] == f"# pyproject.toml dependencies: {lock_inputs(REPO / 'pyproject.toml')}", (
        f"{lock} is stale: run `make lock`")
    for line in text.replace("\\\n", " ").splitlines():
        if line and not line.startswith((" ", "#")):
            assert "--hash=sha256:" in line, line


def test_this_environment_is_exactly_its_lock() -> None:
    installed = environment_lock()
    if installed is None:
        pytest.skip("this environment was not installed by `make install`")
    assert installed["sha256"] == hashlib.sha256((REPO / installed["file"]).read_bytes()).hexdigest(), (
        f"{installed['file']} changed since `make install`")
    wrong = {}
    for name, pinned in pins(REPO / installed["file"]).items():
        try:
            found = version(name)
        except PackageNotFoundError:
            found = "not installed"
        if found != pinned:
            wrong[name] = (pinned, found)
    assert not wrong, wrong


def test_make_install_refuses_a_pyproject_edited_without_relocking(tmp_path: Path) -> None:
    for name in ("Makefile", "pyproject.toml", *LOCKS):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"psutil>=5.9"', '"psutil>=6"'))
    result = subprocess.run(["make", "install", "VENV=venv"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode != 0
    assert "pyproject.toml's dependencies differ from those locks/cpu.txt was made from: run `make lock`" in (
        result.stdout)
    assert not (tmp_path / "venv").exists()  # refused before anything was installed
