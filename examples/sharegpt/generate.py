"""The chat demo in the ShareGPT format, as many public conversation sets are spelled: writes
data/raw/sharegpt_train.jsonl and data/raw/sharegpt_eval.jsonl ({"conversations": [{"from": "human", "value": …}]},
roles system, human and gpt) from data/demo_chat/*.jsonl.

    python examples/sharegpt/generate.py
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROLES = {"system": "system", "user": "human", "assistant": "gpt"}


def main() -> None:
    (ROOT / "data" / "raw").mkdir(parents=True, exist_ok=True)
    for split in ("train", "eval"):
        lines = (ROOT / "data" / "demo_chat" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        out = ROOT / "data" / "raw" / f"sharegpt_{split}.jsonl"
        with out.open("w", encoding="utf-8") as handle:
            for line in lines:
                messages = json.loads(line)["messages"]
                turns = [{"from": ROLES[m["role"]], "value": m["content"]} for m in messages]
                handle.write(json.dumps({"conversations": turns}, ensure_ascii=False) + "\n")
        print(f"wrote {out.relative_to(ROOT)} ({len(lines)} conversations)")


if __name__ == "__main__":
    main()
