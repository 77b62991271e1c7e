"""The Q&A demo as CSV files with other column names, as a data scientist's export would have them: writes
data/raw/qa_train.csv and data/raw/qa_eval.csv (columns question, answer) from data/demo/*.jsonl.

    python examples/csv/generate.py
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    (ROOT / "data" / "raw").mkdir(parents=True, exist_ok=True)
    for split in ("train", "eval"):
        rows = pd.read_json(ROOT / "data" / "demo" / f"{split}.jsonl", lines=True)
        out = ROOT / "data" / "raw" / f"qa_{split}.csv"
        rows.rename(columns={"prompt": "question", "response": "answer"}).to_csv(out, index=False)
        print(f"wrote {out.relative_to(ROOT)} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
