"""Regenerate the demo preference pairs from the demo instruction set (data/demo), offline and deterministically.

Each pair asks what a standard-library callable does ("What does `shlex.quote(s)` do?"). The chosen answer is
its docstring summary; the rejected one is a plausible mistake: the summary of a sibling callable, from the same
module where there is one, written in the same style and vocabulary, so that only knowing which callable does what
tells them apart. The held-out split is data/demo's, so whole modules stay unseen in training.

    python data/demo_preference/generate.py   # writes data/demo_preference/train.jsonl and eval.jsonl
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO = HERE.parent / "demo"


def chat_generator():
    """data/demo_chat/generate.py, whose demo_modules and module_of say which module a callable is in."""
    spec = importlib.util.spec_from_file_location("demo_chat_generate", HERE.parent / "demo_chat" / "generate.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    return generator


CHAT = chat_generator()
CALL = re.compile(r"^What does `(?P<name>[\w.]+)\(")  # the callable's name (the chat demo also parses the arguments)


def module_of(prompt: str, modules: set[str]) -> str:
    """The module of the callable a prompt asks about (the builtins when the prompt names no call)."""
    found = CALL.match(prompt)
    return CHAT.module_of(found["name"], modules) if found else "builtins"


def stable_index(text: str, size: int) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16) % size


def pairs(rows: list[dict[str, str]], modules: set[str]) -> list[dict[str, str]]:
    """Each row's prompt and answer, with a sibling's different answer as the rejected one (a sibling in the same
    module, picked by a hash of the prompt; any other row of the split for a module with no sibling)."""
    by_module: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_module[module_of(row["prompt"], modules)].append(row)
    result = []
    for row in rows:
        siblings = [r for r in by_module[module_of(row["prompt"], modules)] if r["response"] != row["response"]]
        pool = siblings or [r for r in rows if r["response"] != row["response"]]
        rejected = pool[stable_index(row["prompt"], len(pool))]["response"]
        result.append({"prompt": row["prompt"], "chosen": row["response"], "rejected": rejected})
    return result


def main() -> None:
    modules = CHAT.demo_modules()
    for split in ("train", "eval"):
        rows = [json.loads(line) for line in (DEMO / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
        written = pairs(rows, modules)
        (HERE / f"{split}.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in written),
                                             encoding="utf-8")
        print(f"{split}: {len(written)} pairs")


if __name__ == "__main__":
    main()
