"""Run the benchmarks in order: P1 training, P8 training by data format, P3 generation, P7 serving, P6 data at scale
(10k and 100k rows), then P2 orchestration (the longest) last.

    python -m benchmarks.run_all [--prefect ephemeral|server|both] [--p6-max-rows 1000000]

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
    parser.add_argument("--p6-max-rows", type=int, default=100_000,
                        help="P6's largest training set (1000000 adds the 1M point, about half an hour)")
    args = parser.parse_args()
    for command in (["benchmarks.p1_training"], ["benchmarks.p8_formats"], ["benchmarks.p3_generation"],
                    ["benchmarks.p7_serving"], ["benchmarks.p6_scale", "--max-rows", str(args.p6_max_rows)],
                    ["benchmarks.p2_orchestration", "--prefect", args.prefect]):
        print(f"\n$ python -m {' '.join(command)}", flush=True)
        if subprocess.run([sys.executable, "-m", *command], cwd=REPO).returncode != 0:
            sys.exit(f"{command[0]} failed")


if __name__ == "__main__":
    main()
