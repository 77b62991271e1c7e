"""Regenerate the demo portfolio: three specializations of other task types than the Q&A demo (data/demo), each
with a train and a held-out split, offline and deterministic.

    classification/  which standard-library module a callable belongs to, from its docstring summary: a short text
                     to one of eight labels, the shape of support-ticket categorization (evaluate.task:
                     classification). A fifth of the callables of each module is held out (by a hash of the
                     name), as next month's tickets are new ones of the same kinds.
    summarization/   a docstring's body (description, arguments, notes) to its one-line summary (evaluate.task:
                     summarization). The Q&A demo's held-out modules are held out here too.
    translation/     software interface strings, English to German, from the gettext catalogs of Django (evaluate.task:
                     translation). Whole catalogs (Django applications) are held out.

The docstrings are those of the Python standard library running this script (the PSF licence). The catalogs come
from a pinned wheel on PyPI, read without installing it; Django and its translations are under the BSD-3-Clause
licence, whose notice is copied next to the data (translation/DJANGO-LICENSE):

    pip download --no-deps django==5.2.8 -d /tmp/wheels
    python data/portfolio/generate.py /tmp/wheels/django-5.2.8-py3-none-any.whl
"""

from __future__ import annotations

import gettext
import hashlib
import inspect
import io
import re
import runpy
import sys
import zipfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root: the validate stage's near-duplicate check
from tasks.core.params import ValidateParams  # noqa: E402
from tasks.data.contamination import nearly_repeated  # noqa: E402

DJANGO_WHEEL = "django-5.2.8-py3-none-any.whl"
LABELS = ("asyncio", "datetime", "decimal", "logging", "os", "socket", "tarfile", "zipfile")
HELD_OUT_CATALOGS = {"admindocs", "humanize", "sites", "flatpages"}
EVAL_SHARE = 0.2
MAX_BODY_CHARS = 700  # with its summary, within tokenize.max_length (256 tokens)


# data/demo/generate.py's functions: its docstring walk, summaries and held-out modules.
DEMO = SimpleNamespace(**runpy.run_path(str(HERE.parent / "demo" / "generate.py")))


def ordered(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Rows in a hash order of their prompts: the first N of a split are a spread of it, and the order is stable."""
    return sorted(rows, key=lambda row: hashlib.sha256(row["prompt"].encode()).hexdigest())


def held_out(name: str) -> bool:
    """About EVAL_SHARE of the names, chosen by a hash."""
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % 100 < EVAL_SHARE * 100


def unique_prompts(rows: list[tuple[str, dict[str, str]]]) -> list[tuple[str, dict[str, str]]]:
    """Rows whose prompt no other row has: a shared one (an inherited docstring) would sit in both splits, or
    ask for two answers."""
    counts = Counter(row["prompt"] for _, row in rows)
    return [(group, row) for group, row in rows if counts[row["prompt"]] == 1]


def classification() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Docstring summary -> module; each callable held out or not by a hash of its name."""
    rows = []
    for module in LABELS:
        for qualname, obj in DEMO.documented_names(module):
            doc = getattr(obj, "__doc__", None)
            text = DEMO.summary(doc) if isinstance(doc, str) else None
            if text:
                rows.append((qualname, {"prompt": text, "response": module}))
    rows = unique_prompts(rows)
    return ([row for group, row in rows if not held_out(group)], [row for group, row in rows if held_out(group)])


def body(doc: str) -> str | None:
    """A docstring without its summary paragraph (and a C function's signature line): what the summary sums up.
    Bodies with interactive examples or an address are left out: validation's personal-data check refuses them
    (long numbers read as phone numbers; email.utils.make_msgid shows a real person's address)."""
    paragraphs = [p for p in re.split(r"\n\s*\n", inspect.cleandoc(doc)) if p.strip()]
    if paragraphs and DEMO.SIGNATURE_LINE.match(paragraphs[0].strip().splitlines()[0]):
        paragraphs = paragraphs[1:]
    rest = "\n\n".join(p.strip() for p in paragraphs[1:])
    return rest if 80 <= len(rest) <= MAX_BODY_CHARS and ">>>" not in rest and "@" not in rest else None


def summarization() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Docstring body -> its summary, for every demo module; the Q&A demo's held-out modules held out here."""
    held = DEMO.eval_modules(DEMO.examples())
    rows = []
    for module in DEMO.MODULES:
        for _, obj in DEMO.documented_names(module):
            doc = getattr(obj, "__doc__", None)
            text = DEMO.summary(doc) if isinstance(doc, str) else None
            rest = body(doc) if text else None
            if rest:
                rows.append((module, {"prompt": rest, "response": text}))
    rows = unique_prompts(rows)
    return ([row for module, row in rows if module not in held], [row for module, row in rows if module in held])


def catalogs(wheel: Path) -> dict[str, dict[str, str]]:
    """Each German catalog of the wheel (named by its Django application; "core" for Django's own) as English ->
    German, from its compiled .mo file. Plural forms, context-qualified entries and strings with markup are left
    out: each row is one plain interface string."""
    found: dict[str, dict[str, str]] = {}
    with zipfile.ZipFile(wheel) as archive:
        for name in sorted(archive.namelist()):
            match = re.fullmatch(r"django/(?:contrib/(\w+)/)?(?:conf/)?locale/de/LC_MESSAGES/django\.mo", name)
            if not match:
                continue
            catalog = gettext.GNUTranslations(io.BytesIO(archive.read(name)))._catalog  # type: ignore[attr-defined]
            found[match[1] or "core"] = {
                english: german for english, german in catalog.items()
                if isinstance(english, str) and english and german and "\x04" not in english
                and not re.search(r"[<>{}]|%\(", english) and english != german}
    return found


def translation(wheel: Path) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    rows = [(app, {"prompt": english, "response": german})
            for app, strings in catalogs(wheel).items() for english, german in strings.items()]
    rows = unique_prompts(rows)
    return ([row for app, row in rows if app not in HELD_OUT_CATALOGS],
            [row for app, row in rows if app in HELD_OUT_CATALOGS])


def write(name: str, splits: tuple[list[dict[str, str]], list[dict[str, str]]]) -> None:
    """Write the splits, less the held-out rows whose prompt nearly repeats a training one (another callable's
    docstring that differs by a word, a string that differs in case): they would test recall, not generalization,
    and the validate stage refuses them (validate.near_duplicates)."""
    train, held = splits
    near = nearly_repeated([row["prompt"] for row in train], [row["prompt"] for row in held],
                           ValidateParams().near_duplicate_similarity)
    held = [row for i, row in enumerate(held) if i not in near]
    folder = HERE / name
    folder.mkdir(exist_ok=True)
    for split, rows in (("train", train), ("eval", held)):
        DEMO.write_jsonl(folder / f"{split}.jsonl", ordered(rows))
    print(f"{name}: {len(train)} train, {len(held)} held-out rows ({len(near)} near duplicates of train left out)")


def main() -> None:
    if len(sys.argv) != 2 or Path(sys.argv[1]).name != DJANGO_WHEEL:
        sys.exit(f"usage: python {sys.argv[0]} /path/to/{DJANGO_WHEEL}  (pip download --no-deps django==5.2.8)")
    wheel = Path(sys.argv[1])
    write("classification", classification())
    write("summarization", summarization())
    write("translation", translation(wheel))
    with zipfile.ZipFile(wheel) as archive:
        notice = next(n for n in archive.namelist() if n.endswith(".dist-info/licenses/LICENSE")
                      or n.endswith(".dist-info/LICENSE"))
        (HERE / "translation" / "DJANGO-LICENSE").write_bytes(archive.read(notice))
    print(f"from Python {sys.version.split()[0]} docstrings and {wheel.name}")


if __name__ == "__main__":
    main()
