"""Run the benchmarks in order: P1 training, P3 generation, then P2 orchestration (the longest) last.

    python -m benchmarks.run_all [--prefect ephemeral|server|both]

Each writes its table to stdout and its JSON to benchmarks/results/; the first failure stops the run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from benchmarks.workload import REPO


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefect", choices=["ephemeral", "server", "both"], default="ephemeral",
                        help="P2's Prefect mode")
    args = parser.parse_args()
    for command in (["benchmarks.p1_training"], ["benchmarks.p3_generation"],
                    ["benchmarks.p2_orchestration", "--prefect", args.prefect]):
        print(f"\n$ python -m {' '.join(command)}", flush=True)
        if subprocess.run([sys.executable, "-m", *command], cwd=REPO).returncode != 0:
            sys.exit(f"{command[0]} failed")


if __name__ == "__main__":
    main()
