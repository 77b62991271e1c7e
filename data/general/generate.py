"""Regenerate the general-domain text: the held-out text that measures forgetting, and the text replayed in
training against it.

Paragraphs of prose from the Python Language Reference, which every Python ships as
`pydoc_data.topics`: real, human-written documentation in a register unlike the demo's one-line
docstring summaries. Evaluation scores the base and the fine-tuned model on the first 300
(reference.jsonl); a large rise in perplexity means the specialization forgot general ability.
The paragraphs after them (replay.jsonl) are what `finetune.replay_pct` mixes into training, so the
text forgetting is measured on is never trained on.

    python data/general/generate.py     # writes data/general/reference.jsonl and replay.jsonl
"""

from __future__ import annotations

import json
import pydoc_data.topics
import re
import sys
from pathlib import Path

PARAGRAPHS = 300
MIN_CHARS = 200


def prose_paragraphs() -> list[str]:
    """Whole-sentence paragraphs; code samples, grammar rules and headings are left out."""
    found = []
    for topic in sorted(pydoc_data.topics.topics):
        for block in re.split(r"\n\s*\n", pydoc_data.topics.topics[topic]):
            text = " ".join(block.split())
            if len(text) >= MIN_CHARS and text[0].isupper() and text.endswith(".") and "::" not in text \
                    and ">>>" not in text and text not in found:
                found.append(text)
    return found


def main() -> None:
    paragraphs = prose_paragraphs()
    for name, rows in (("reference", paragraphs[:PARAGRAPHS]), ("replay", paragraphs[PARAGRAPHS:])):
        out = Path(__file__).parent / f"{name}.jsonl"
        out.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in rows), encoding="utf-8")
        print(f"{len(rows)} paragraphs from Python {sys.version.split()[0]}'s language reference written to {out}")


if __name__ == "__main__":
    main()
