"""The `tailor` command: `tailor check` validates params.yaml without running anything; `tailor lineage` prints a
promoted model's lineage and checks it against dvc.lock. No stage imports this module."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tasks.dag import declared_paths
from tasks.errors import UserError
from tasks.lineage import show_lineage
from tasks.params import PARAMS_FILE, load_params


def check(path: Path) -> int:
    load_params(path)
    print(f"{path} is valid")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="tailor", description="tailor: reproducible LLM specialization")
    commands = parser.add_subparsers(dest="command", required=True)
    checking = commands.add_parser("check", help="validate params.yaml against the schema; runs nothing")
    checking.add_argument("params", nargs="?", type=Path, default=PARAMS_FILE)
    lineage = commands.add_parser("lineage", help="print a promoted model's lineage and check it against dvc.lock")
    lineage.add_argument("model_dir", nargs="?", type=Path, help="default: the promote stage's production directory")
    args = parser.parse_args()
    try:
        if args.command == "check":
            sys.exit(check(args.params))
        sys.exit(show_lineage(args.model_dir or declared_paths("promote")["production"]))
    except UserError as exc:
        print(f"tailor: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
