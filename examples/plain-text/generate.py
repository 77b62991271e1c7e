"""A small "legal" corpus for domain adaptation (data.format text): the paragraphs of the software licences that
Debian and Ubuntu ship in /usr/share/common-licenses (GPL, LGPL, GFDL, Artistic, BSD, CC0, MPL-1.1, ...).
MPL-2.0 and Apache-2.0 are held out whole, so evaluation measures licence language the model has not read; their
paragraphs that nearly repeat a training one (MPL-1.1's clauses reworded) are left out, as validate would refuse them.

    python examples/plain-text/generate.py      # writes data/raw/licences_train.jsonl and licences_eval.jsonl

The licence texts are themselves licensed to be copied verbatim; each file names its terms.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: validate's near-duplicate check
from tasks.core.params import ValidateParams  # noqa: E402
from tasks.data.contamination import nearly_repeated  # noqa: E402

SOURCE = Path("/usr/share/common-licenses")
OUT = Path(__file__).resolve().parents[2] / "data" / "raw"
HELD_OUT = {"MPL-2.0", "Apache-2.0"}
MIN_CHARS, MAX_CHARS = 80, 3500


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, whitespace joined, long enough to be prose."""
    found = (" ".join(block.split()) for block in re.split(r"\n\s*\n", text))
    return [p for p in found if MIN_CHARS <= len(p) <= MAX_CHARS and re.search(r"[a-z]{3}", p)]


def main() -> None:
    splits: dict[str, list[str]] = {"train": [], "eval": []}
    seen: set[str] = set()
    for path in sorted(p for p in SOURCE.iterdir() if p.is_file() and not p.is_symlink()):
        split = "eval" if path.name in HELD_OUT else "train"
        for paragraph in paragraphs(path.read_text(encoding="utf-8", errors="replace")):
            if paragraph not in seen:  # licences repeat boilerplate; keep each paragraph once, first seen wins
                seen.add(paragraph)
                splits[split].append(paragraph)
    near = nearly_repeated(splits["train"], splits["eval"], ValidateParams().near_duplicate_similarity)
    splits["eval"] = [paragraph for i, paragraph in enumerate(splits["eval"]) if i not in near]
    OUT.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        (OUT / f"licences_{split}.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in rows),
                                                     encoding="utf-8")
        print(f"{len(rows)} {split} paragraphs -> {OUT / f'licences_{split}.jsonl'}")


if __name__ == "__main__":
    main()
