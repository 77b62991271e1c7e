"""Regenerate the demo instruction set from the docstrings of the Python standard library.

Every machine with Python has this text, and it is human-written: each example asks what a
standard-library callable does and answers with the first paragraph of its docstring. The eval
split holds out whole modules, chosen by hash; rows are ordered by a hash of the prompt, so the
first N eval rows are a spread of those modules and regenerating on one Python gives the same files.

    python data/demo/generate.py            # writes data/demo/train.jsonl and data/demo/eval.jsonl
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import re
import sys
from collections import Counter
from pathlib import Path

MODULES = (
    "abc argparse ast asyncio base64 bisect builtins bz2 calendar cmath codecs collections colorsys "
    "concurrent.futures configparser contextlib contextvars copy csv dataclasses datetime decimal "
    "difflib dis email.utils enum filecmp fileinput fnmatch fractions functools getpass gettext glob "
    "graphlib gzip hashlib heapq hmac html html.parser http.client http.cookies imaplib importlib "
    "inspect io ipaddress itertools json keyword linecache locale logging lzma mailbox math mimetypes "
    "multiprocessing netrc numbers operator optparse os os.path pathlib pickle pkgutil platform "
    "plistlib poplib pprint queue quopri random re reprlib sched secrets selectors shelve shlex "
    "shutil signal smtplib socket sqlite3 stat statistics string struct subprocess sysconfig tarfile "
    "tempfile textwrap threading time timeit tokenize tomllib traceback types typing unicodedata "
    "unittest urllib.parse urllib.request uuid warnings wave weakref xml.dom.minidom "
    "xml.etree.ElementTree zipfile zlib zoneinfo"
).split()
MIN_CHARS, MAX_CHARS = 24, 280
EVAL_SHARE = 0.1  # about one example in ten is held out, whole modules at a time
SIGNATURE_LINE = re.compile(r"^[\w.]+\(.*\)( -> .*)?$")


def summary(doc: str) -> str | None:
    """The docstring's first paragraph as one line, or None when it is not a usable answer."""
    paragraphs = [p for p in re.split(r"\n\s*\n", inspect.cleandoc(doc)) if p.strip()]
    # C functions start their docstring with a signature line; the description follows it.
    while paragraphs and SIGNATURE_LINE.match(paragraphs[0].strip().splitlines()[0]):
        rest = paragraphs[0].strip().splitlines()[1:]
        paragraphs = ([" ".join(rest)] if rest else []) + paragraphs[1:]
    if not paragraphs:
        return None
    text = " ".join(paragraphs[0].split())
    if not MIN_CHARS <= len(text) <= MAX_CHARS or not text[0].isupper():
        return None
    return text


def signature(obj: object) -> str:
    """The call signature without `self` and without object addresses, which change every run."""
    try:
        text = str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "()"
    text = re.sub(r" at 0x[0-9a-f]+", "", text)
    text = re.sub(r"^\(self(, )?", "(", text)
    return re.sub(r"^\(/(, )?", "(", text)  # a positional-only marker left first means nothing


def documented_names(module_name: str) -> list[tuple[str, object]]:
    """Public functions and classes of a module, and the public methods of its classes."""
    module = importlib.import_module(module_name)
    public = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    found: list[tuple[str, object]] = []
    for name in sorted(public):
        obj = getattr(module, name, None)
        if not (inspect.isroutine(obj) or inspect.isclass(obj)):
            continue
        found.append((f"{module_name}.{name}", obj))
        if inspect.isclass(obj):
            for attr, member in sorted(vars(obj).items()):
                if not attr.startswith("_") and inspect.isroutine(member):
                    found.append((f"{module_name}.{name}.{attr}", getattr(obj, attr)))
    return found


def examples() -> list[tuple[str, dict[str, str]]]:
    """(module, {prompt, response}) for each documented name whose summary is unique to it."""
    candidates: list[tuple[str, str, str]] = []
    for module_name in MODULES:
        for qualname, obj in documented_names(module_name):
            doc = getattr(obj, "__doc__", None)
            text = summary(doc) if isinstance(doc, str) else None
            if text:
                call = qualname.removeprefix("builtins.") + signature(obj)
                candidates.append((module_name, f"What does `{call}` do?", text))
    # A summary shared by several names (inherited or re-exported) would put the same answer in
    # both splits; keeping only unique summaries also keeps the data free of exact duplicates.
    counts = Counter(response for _, _, response in candidates)
    seen: set[str] = set()
    rows = []
    for module_name, prompt, response in candidates:
        if counts[response] == 1 and prompt not in seen:
            seen.add(prompt)
            rows.append((module_name, {"prompt": prompt, "response": response}))
    return rows


def eval_modules(rows: list[tuple[str, dict[str, str]]]) -> set[str]:
    """Modules held out whole, in a fixed hash order, until they hold EVAL_SHARE of the examples.

    Holding out whole modules keeps a module's near-identical siblings (`a85encode`/`b85encode`) out of
    train, so evaluation measures what a specialization generalizes, not what it can look up.
    """
    sizes = Counter(module for module, _ in rows)
    held: set[str] = set()
    for module in sorted(sizes, key=lambda m: hashlib.sha256(m.encode()).hexdigest()):
        if sum(sizes[m] for m in held) >= EVAL_SHARE * len(rows):
            break
        held.add(module)
    return held


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def main() -> None:
    here = Path(__file__).parent
    rows = sorted(examples(), key=lambda row: hashlib.sha256(row[1]["prompt"].encode()).hexdigest())
    held = eval_modules(rows)
    write_jsonl(here / "train.jsonl", [row for module, row in rows if module not in held])
    write_jsonl(here / "eval.jsonl", [row for module, row in rows if module in held])
    print(f"held out for evaluation: {', '.join(sorted(held))}")
    print(f"{len(rows)} examples from Python {sys.version.split()[0]} docstrings written to {here}")


if __name__ == "__main__":
    main()
