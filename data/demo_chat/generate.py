"""Regenerate the demo conversations from the demo instruction set (data/demo), offline and deterministically.

Each conversation starts from one instruction example ("What does `shlex.quote(s)` do?" and its docstring
summary) and goes on with two follow-up questions that only make sense with the first turn in view: which module
the callable is in, and what arguments it takes, asked without naming it again. The order of the follow-ups
alternates, so the held-out final turn is either; one conversation in three opens with a system message. The
held-out split is data/demo's, so whole modules stay unseen in training.

    python data/demo_chat/generate.py       # writes data/demo_chat/train.jsonl and data/demo_chat/eval.jsonl
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO = HERE.parent / "demo"
SYSTEM = "You document the Python standard library. Answer in one sentence."
CALL = re.compile(r"^What does `(?P<name>[\w.]+)\((?P<args>.*)\)` do\?$")


def demo_modules() -> set[str]:
    """The modules data/demo/generate.py takes its callables from."""
    spec = importlib.util.spec_from_file_location("demo_generate", DEMO / "generate.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    return set(generator.MODULES)


def module_of(name: str, modules: set[str]) -> str:
    """The longest dotted prefix of name that is one of the modules; the builtins otherwise."""
    parts = name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return "builtins"


def conversation(row: dict[str, str], number: int, modules: set[str]) -> dict[str, list[dict[str, str]]] | None:
    found = CALL.match(row["prompt"])
    if found is None:
        return None
    args = found["args"].strip()
    module = module_of(found["name"], modules)
    follow_ups = [("Which module is it in?", f"It is in the `{module}` module."),
                  ("What arguments does it take?", f"It takes `{args}`." if args else "It takes no arguments.")]
    if number % 2:
        follow_ups.reverse()
    messages = [{"role": "system", "content": SYSTEM}] if number % 3 == 0 else []
    messages += [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]
    for question, answer in follow_ups:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def main() -> None:
    splits = {split: [json.loads(line) for line in (DEMO / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
              for split in ("train", "eval")}
    modules = demo_modules()
    for split, rows in splits.items():
        conversations = [c for number, row in enumerate(rows) if (c := conversation(row, number, modules))]
        (HERE / f"{split}.jsonl").write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in conversations),
                                             encoding="utf-8")
        print(f"{split}: {len(conversations)} conversations")


if __name__ == "__main__":
    main()
