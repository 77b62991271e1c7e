"""The docs stay true: the generated pages (configuration reference, error catalogue) are current, and every
command shown in a shell block of the README and the docs exists: make targets in the Makefile, `tailor`
subcommands in the CLI, `dvc` subcommands in DVC, Python modules and scripts in the repository. (`make test` also
builds the site with mkdocs in strict mode, so a broken link fails.)"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from docs.generate import pages

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", REPO / "benchmarks" / "RESULTS.md", *sorted((REPO / "docs").glob("*.md"))]
# Programs the docs show that the locked environment does not install: the system's, or the user's set-up (Ollama,
# llama.cpp), named where shown.
EXTERNAL = {"cp", "mkdir", "curl", "git", "ollama", "llama-cli", "source", "cd", "export"}


def shown_commands() -> list[tuple[str, list[str]]]:
    """(page, words) of each command in a bash block: continuation lines joined, comments and leading
    VAR=value assignments dropped, `a && b` split."""
    found = []
    for page in PAGES:
        for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", page.read_text(encoding="utf-8"), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0].strip()
                for command in re.split(r"&&|;|\|\|", "" if line.startswith("#") else line):
                    words = command.split()
                    while words and re.match(r"^[A-Z_]+=", words[0]):
                        words = words[1:]
                    if words:
                        found.append((page.relative_to(REPO).as_posix(), words))
    return found


def test_the_generated_pages_are_current(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    for path, text in pages().items():
        assert path.read_text(encoding="utf-8") == text, f"{path} is stale: run `make docs` and commit it"


def test_every_command_shown_in_the_docs_exists() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    subcommands = set(re.findall(r'add_parser\("([\w-]+)"', (REPO / "tasks" / "cli.py").read_text()))
    dvc_help = subprocess.run([sys.executable, "-m", "dvc", "--help"], capture_output=True, text=True).stdout
    dvc_commands = {name for names in re.findall(r"^ {4}([a-z-]+(?: \([a-z-]+\))?)", dvc_help, re.M)
                    for name in names.replace("(", "").replace(")", "").split()}
    commands = shown_commands()
    assert len(commands) > 40
    for page, words in commands:
        program, rest = words[0], words[1:]
        shown = f"{page}: {' '.join(words)}"
        if program == "make":
            assert all(t in targets for t in rest if "=" not in t and not t.startswith("-")), shown
        elif program == "tailor":
            assert rest and rest[0] in subcommands, shown
        elif program == "dvc":
            assert rest and rest[0] in dvc_commands, shown
        elif program == "python":
            if rest[0] == "-m":
                assert importlib.util.find_spec(rest[1]) is not None, shown
            else:
                assert (REPO / rest[0]).is_file(), shown
        else:  # a program of the locked environment (gto, prefect, torchrun, ...) or one of the user's
            assert (Path(sys.executable).parent / program).is_file() or program in EXTERNAL, shown
