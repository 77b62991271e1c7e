"""P7: `tailor serve` under load: 200 chat requests, 8 at a time, the promoted specialist and the base model
interleaved, against the same requests one at a time, with the official `openai` client on 127.0.0.1.

Every concurrent answer must equal the one-at-a-time answer (greedy decoding); the figures are requests/s (both
arms), the ratio, and p50/p95 latency.

    python -m benchmarks.p7_serving [--requests 200] [--concurrency 8] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pandas as pd

from benchmarks.harness import environment, free_port
from benchmarks.report import RESULTS_DIR, print_goals, print_table, write_json
from benchmarks.workload import REPO
from tasks.core.dag import declared_paths

GOAL_RATIO = 2.0
MODELS = ("production", "base")


def start_server(port: int) -> subprocess.Popen[str]:
    server = subprocess.Popen(["tailor", "serve", "--port", str(port)], cwd=REPO, env=environment(),
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while True:
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("tailor serve did not start (run `make run` first: it needs a promoted model)")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.5)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "p7_serving.json")
    args = parser.parse_args()
    eval_file = REPO / declared_paths("evaluate")["validated"] / "eval.parquet"
    prompts = list(pd.read_parquet(eval_file)["prompt"][: args.requests // (2 * len(MODELS)) or 1])
    jobs = [(MODELS[i % len(MODELS)], prompts[(i // len(MODELS)) % len(prompts)]) for i in range(args.requests)]
    port = free_port()
    server = start_server(port)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)

    def ask(job: tuple[str, str]) -> tuple[str, float]:
        started = time.perf_counter()
        answer = client.chat.completions.create(model=job[0], messages=[{"role": "user", "content": job[1]}],
                                                max_tokens=args.max_tokens, temperature=0)
        return answer.choices[0].message.content or "", time.perf_counter() - started

    try:
        ask(jobs[0])  # the model worker's first request pays one-off costs
        unique = sorted(set(jobs))
        started = time.perf_counter()
        alone = {job: ask(job) for job in unique}
        alone_seconds = time.perf_counter() - started
        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            together = list(pool.map(ask, jobs))
        together_seconds = time.perf_counter() - started
    finally:
        os.killpg(server.pid, signal.SIGINT)
        server.wait(timeout=60)
    identical = sum(answer == alone[job][0] for job, (answer, _) in zip(jobs, together)) / len(jobs)
    latencies = [seconds for _, seconds in together]
    alone_latencies = [seconds for _, seconds in alone.values()]
    arms = {
        "one at a time": {"requests": len(unique), "requests_per_second": round(len(unique) / alone_seconds, 3),
                          "p50_s": round(percentile(alone_latencies, 0.5), 3),
                          "p95_s": round(percentile(alone_latencies, 0.95), 3)},
        f"{args.concurrency} at a time": {"requests": len(jobs),
                                          "requests_per_second": round(len(jobs) / together_seconds, 3),
                                          "p50_s": round(percentile(latencies, 0.5), 3),
                                          "p95_s": round(percentile(latencies, 0.95), 3)},
    }
    ratio = arms[f"{args.concurrency} at a time"]["requests_per_second"] / arms["one at a time"]["requests_per_second"]
    print_table(f"P7 serving: {', '.join(MODELS)} interleaved, greedy, max_tokens {args.max_tokens}",
                ["requests", "requests_per_second", "p50_s", "p95_s"], arms)
    print_goals({"requests/s, concurrent ÷ one at a time": (round(ratio, 2), f"≥ {GOAL_RATIO:g}", ratio >= GOAL_RATIO),
                 "answers equal to one at a time": (f"{identical:.0%}", "100%", identical == 1.0)})
    write_json(args.out, {"benchmark": "p7_serving", "models": MODELS, "max_tokens": args.max_tokens,
                          "concurrency": args.concurrency, "arms": arms, "speedup": round(ratio, 2),
                          "speedup_goal_met": ratio >= GOAL_RATIO, "identical_fraction": identical,
                          "mean_latency_s": round(statistics.mean(latencies), 3)})


if __name__ == "__main__":
    main()
