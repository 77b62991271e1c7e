"""P6: data at scale on one machine. `validate` (and, alone, its near-duplicate contamination check), `tokenize` and
the retrieval index at 10k, 100k and 1M training rows: time and peak memory, and whether time grows linearly (the 1M ÷ 100k time ratio: 10 is linear).

The rows are the demo's training examples repeated, each copy's prompts made unique ("… (variant N)"), so that the
set passes validation (no duplicates, no eval example in train); eval is the demo's. Each stage's work runs in a
process of its own, through the code the stage runs (`run_suites` and `write_clean_splits`; `tokenize_file` per
split; `build_index` with MiniLM), without Prefect's reporting. Its time is the work alone (imports excluded), in
wall-clock and in CPU seconds (the process and its workers; steadier on a shared machine). Its memory is sampled
over the process and its children (tokenize's workers): the peak of their summed RSS (an upper bound: forked
workers share pages), of the largest single process, and of their summed PSS (shared pages counted once), in all
and its anonymous part (what is not page cache of files: the memory the work itself holds).

    python -m benchmarks.p6_scale                      # 10k and 100k rows; the index at 10k (MiniLM is slow on CPU)
    python -m benchmarks.p6_scale --max-rows 1000000   # adds the 1M point (15-20 min more on 2 cores)
    python -m benchmarks.p6_scale --rows 60 --index-max-rows 60     # a quick check of the script
    python -m benchmarks.p6_scale --max-rows 1000000 --stages validate contamination   # those stages only
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.report import RESULTS_DIR, print_goals, print_table, write_json

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"
SIZES = (10_000, 100_000, 1_000_000)
GOAL_RSS_GIB = 3.0
GOAL_RATIO = 12.0  # 1M ÷ 100k time: 10 is linear; fixed costs pull it below 10, anything superlinear above
SAMPLE_SECONDS = 0.5  # reading every process's smaps_rollup costs CPU; the stages take seconds to minutes
STAGES = ("validate", "contamination", "tokenize", "index")


def generate(rows: int, path: Path) -> int:
    """`rows` unique instruction rows from the demo's training set, written line by line; returns the bytes."""
    demo = (DEMO / "train.jsonl").read_text(encoding="utf-8").splitlines()
    with path.open("w", encoding="utf-8") as out:
        for i in range(rows):
            row = json.loads(demo[i % len(demo)])
            copy = i // len(demo)
            if copy:
                row["prompt"] = f"{row['prompt']} (variant {copy})"
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path.stat().st_size


def run_validate(data: Path) -> None:
    from tasks.core.params import load_params
    from tasks.data.validation import run_suites, write_clean_splits
    from tasks.formats.registry import format_of

    params = load_params(REPO / "params.yaml")
    reader = format_of(params.data.format)
    splits = {"train": data / "train.jsonl", "eval": DEMO / "eval.jsonl"}
    report, failures = run_suites.fn(splits["train"], splits["eval"], reader.checks(params.data, params.validate_),
                                     params.validate_, data / "data_docs")
    if failures:
        sys.exit("validation failed: " + "; ".join(f.line() for f in failures))
    write_clean_splits(splits, lambda chunk: reader.canonical(chunk, params.data), data / "validated")


def run_contamination(data: Path) -> None:
    """The near-duplicate check of validate alone (validate's time includes it): train streamed past eval's index."""
    from tasks.core.params import load_params
    from tasks.data.contamination import near_duplicates
    from tasks.data.tables import CHUNK_ROWS
    from tasks.data.validation import chunked, placed_texts
    from tasks.formats.registry import format_of

    params = load_params(REPO / "params.yaml")
    checks = format_of(params.data.format).checks(params.data, params.validate_)
    near_duplicates(*(placed_texts(checks.view(chunked(path, CHUNK_ROWS)), checks.key)
                      for path in (data / "train.jsonl", DEMO / "eval.jsonl")),
                    params.validate_.near_duplicate_similarity)


def run_tokenize(data: Path, model: Path) -> None:
    from transformers import AutoTokenizer

    from tasks.core.params import load_params
    from tasks.data.tokenization import tokenize_file

    params = load_params(REPO / "params.yaml")
    tokenizer = AutoTokenizer.from_pretrained(model)
    for split in ("train", "eval"):
        tokenize_file.fn(tokenizer, data / "validated" / f"{split}.parquet", data / "tokenized" / split,
                         params.data.shape, params.tokenize.system_prompt, params.tokenize.max_length)


def run_index(data: Path) -> None:
    import pyarrow.parquet as pq

    from tasks.evaluate.prompting import build_index, retrieve

    prompts = pq.read_table(data / "validated" / "train.parquet", columns=["prompt"]).column("prompt").to_pylist()
    index = build_index.fn(prompts, "minilm", data / "index")
    queries = pq.read_table(data / "validated" / "eval.parquet", columns=["prompt"]).column("prompt").to_pylist()
    retrieve.fn(index, queries[:64], 3)


def work(stage: str, data: Path, model: Path) -> None:
    """In the child: import, then time the stage's work alone; the time goes to stdout as the last line."""
    run = {"validate": lambda: run_validate(data), "contamination": lambda: run_contamination(data), "tokenize": lambda: run_tokenize(data, model),
           "index": lambda: run_index(data)}[stage]
    # Imports are not the work being measured (sentence-transformers alone takes 5-10 s to import here).
    if stage in ("validate", "contamination"):
        import great_expectations  # noqa: F401
    elif stage == "tokenize":
        import datasets  # noqa: F401
        import transformers  # noqa: F401
    else:
        import sentence_transformers  # noqa: F401
    started, cpu_started = time.perf_counter(), cpu_seconds()
    run()
    print(json.dumps({"work_seconds": time.perf_counter() - started, "work_cpu_seconds": cpu_seconds() - cpu_started}))


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (tokenize's workers): on a machine shared
    with other jobs it varies far less than wall time."""
    return sum(usage.ru_utime + usage.ru_stime
               for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))


def proportional_set_size(pid: int) -> tuple[int, int]:
    """A process's PSS (its pages, each shared page split among the processes that map it) and the anonymous
    part of it, in bytes (Linux). The rest is file pages, such as the memory-mapped Arrow files `datasets` reads:
    page cache that the kernel takes back when memory runs short."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    return int(fields["Pss"].split()[0]) * 1024, int(fields["Pss_Anon"].split()[0]) * 1024


def measure(stage: str, data: Path, model: Path) -> dict[str, Any]:
    """Run one stage's work in a child process; its time, and the peak memory of it and its children."""
    log = data / f"{stage}.log"
    started = time.perf_counter()
    with log.open("w") as output:  # a file, not a pipe: progress bars would fill a pipe nobody reads yet
        child = subprocess.Popen([sys.executable, "-m", "benchmarks.p6_scale", "--work", stage, "--data", str(data),
                                  "--model", str(model)], cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
    root = psutil.Process(child.pid)
    peak_sum = peak_single = peak_pss = peak_anon = 0
    while child.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            rss = [p.memory_info().rss for p in tree]
            pss = [proportional_set_size(p.pid) for p in tree]
            peak_sum, peak_single = max(peak_sum, sum(rss)), max(peak_single, max(rss))
            peak_pss, peak_anon = max(peak_pss, sum(p[0] for p in pss)), max(peak_anon, sum(p[1] for p in pss))
        except (psutil.Error, OSError):  # a process ended between listing and reading it: the next sample counts
            pass
        time.sleep(SAMPLE_SECONDS)
    output = log.read_text(errors="replace")
    if child.returncode != 0:
        sys.exit(f"P6 {stage} failed:\n{output[-4000:]}")
    gib, timed = 1 << 30, json.loads(output.strip().splitlines()[-1])
    return {"seconds": round(timed["work_seconds"], 2), "cpu_seconds": round(timed["work_cpu_seconds"], 2),
            "process_seconds": round(time.perf_counter() - started, 2),
            "peak_rss_gib": round(peak_sum / gib, 3), "peak_rss_largest_process_gib": round(peak_single / gib, 3),
            "peak_pss_gib": round(peak_pss / gib, 3), "peak_pss_anon_gib": round(peak_anon / gib, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=list(SIZES), help="training-set sizes")
    parser.add_argument("--max-rows", type=int, default=100_000, help="skip larger sizes (1000000 for the 1M point)")
    parser.add_argument("--index-max-rows", type=int, default=10_000,
                        help="build the MiniLM index only up to this size (about 60 rows/s on 2 CPU cores)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="measure only these")
    parser.add_argument("--model", type=Path, default=REPO / "models" / "base", help="tokenizer directory")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "p6_scale.json")
    parser.add_argument("--work", choices=STAGES, help=argparse.SUPPRESS)  # the child's side
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.work:
        work(args.work, args.data, args.model)
        return
    sizes = sorted(n for n in args.rows if n <= args.max_rows)
    table: dict[str, dict[str, Any]] = {}
    points: list[dict[str, Any]] = []
    for rows in sizes:
        with tempfile.TemporaryDirectory(prefix="tailor-p6-") as tmp:
            data = Path(tmp)
            size = generate(rows, data / "train.jsonl")
            for stage in args.stages:
                if stage == "index" and rows > args.index_max_rows:
                    continue
                figures = measure(stage, data, args.model)
                points.append({"rows": rows, "jsonl_mb": round(size / 1e6, 1), "stage": stage, **figures})
                table[f"{stage} {rows:,}"] = {"jsonl_mb": round(size / 1e6, 1), **figures}
                print(f"{stage} {rows:,} rows: {figures}", flush=True)
    print_table(f"P6 data at scale: {', '.join(f'{n:,}' for n in sizes)} training rows (+ the demo's eval split)",
                ["jsonl_mb", "seconds", "cpu_seconds", "process_seconds", "peak_rss_gib",
                 "peak_rss_largest_process_gib", "peak_pss_gib", "peak_pss_anon_gib"], table)
    ratios, cpu_ratios = ({stage: round(figure[stage, 1_000_000] / figure[stage, 100_000], 2) for stage in STAGES
                           if (stage, 1_000_000) in figure and (stage, 100_000) in figure}
                          for figure in ({(p["stage"], p["rows"]): p[key] for p in points}
                                         for key in ("seconds", "cpu_seconds")))
    peaks = {stage: max(p["peak_rss_gib"] for p in points if p["stage"] == stage)
             for stage in STAGES if any(p["stage"] == stage for p in points)}
    goals = {f"{stage} peak RSS (GiB, largest size)": (peak, f"< {GOAL_RSS_GIB:g}", peak < GOAL_RSS_GIB)
             for stage, peak in peaks.items() if stage != "index"}
    goals |= {f"{stage} time, 1M ÷ 100k rows": (ratio, f"≈ 10 (≤ {GOAL_RATIO:g})", ratio <= GOAL_RATIO)
              for stage, ratio in ratios.items()}
    print_goals(goals)
    for stage, ratio in cpu_ratios.items():
        print(f"  {stage} CPU time, 1M ÷ 100k rows: {ratio} (less sensitive than wall time to other jobs)")
    if not ratios:
        print("  (no 1M ÷ 100k ratio: run with --max-rows 1000000 for the 1M point)")
    write_json(args.out, {"benchmark": "p6_scale", "model": str(args.model), "points": points,
                          "ratio_1m_to_100k": ratios, "cpu_ratio_1m_to_100k": cpu_ratios,
                          "peak_rss_gib": peaks,
                          "goals_met": all(met for _, _, met in goals.values())})


if __name__ == "__main__":
    main()
