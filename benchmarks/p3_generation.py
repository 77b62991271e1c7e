"""P3: the evaluation's batched generation (left padding, KV cache) against one `generate` call per example.

Both arms: the same model, the same first N eval examples tokenized as the pipeline does, greedy decoding, the
params' max_new_tokens. Batching may change a few greedy answers (padding shifts the floating-point sums), so the
fraction of identical answers is reported, not asserted.

    python -m benchmarks.p3_generation [--model models/base] [--examples 32]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from benchmarks.report import RESULTS_DIR, print_goals, print_table, write_json
from benchmarks.workload import BASE_DIR, pipeline_params, tokenized_split
from tasks.evaluate.inference import generate_answers
from tasks.model.loading import load_model, padding_id, pick_device

GOAL_RATIO = 3.0


@torch.no_grad()
def generate_one_by_one(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dataset: Dataset,
                        max_new_tokens: int) -> tuple[list[str], float]:
    """Greedy answers with one unpadded `generate` call per example: the loop batching replaces."""
    model.eval()
    device = next(model.parameters()).device
    answers, started = [], time.perf_counter()
    for ids, length in zip(dataset["input_ids"], dataset["prompt_length"]):
        prompt = torch.tensor([ids[:length]], device=device)
        output = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=padding_id(tokenizer),
                                eos_token_id=tokenizer.eos_token_id)
        answers.append(tokenizer.decode(output[0, length:], skip_special_tokens=True).strip())
    return answers, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=BASE_DIR, help="model directory (default models/base)")
    parser.add_argument("--examples", type=int, default=32, help="the first N eval examples")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "p3_generation.json")
    args = parser.parse_args()
    params = pipeline_params()
    device = pick_device(params.finetune.device)
    model, tokenizer = load_model(args.model, device)
    dataset = tokenized_split(args.model, "eval", params)
    dataset = dataset.select(range(min(args.examples, len(dataset))))
    max_new_tokens, batch_size = params.evaluate.max_new_tokens, params.evaluate.batch_size
    # One short untimed call first, so neither arm pays the one-off start-up costs.
    generate_one_by_one(model, tokenizer, dataset.select(range(1)), 2)
    # CPU time counts only this process's work: on a machine shared with other jobs it varies less than wall time.
    cpu_started = time.process_time()
    batched, _, _, batched_seconds = generate_answers(model, tokenizer, dataset, batch_size, max_new_tokens)
    cpu_between = time.process_time()
    looped, looped_seconds = generate_one_by_one(model, tokenizer, dataset, max_new_tokens)
    batched_cpu, looped_cpu = cpu_between - cpu_started, time.process_time() - cpu_between
    ratio, cpu_ratio = looped_seconds / batched_seconds, looped_cpu / batched_cpu
    identical = sum(a == b for a, b in zip(batched, looped)) / len(dataset)
    arms = {
        f"batched (batch {batch_size})": {"seconds": round(batched_seconds, 2), "cpu_seconds": round(batched_cpu, 2),
                                          "examples_per_second": round(len(dataset) / batched_seconds, 3)},
        "one by one": {"seconds": round(looped_seconds, 2), "cpu_seconds": round(looped_cpu, 2),
                       "examples_per_second": round(len(dataset) / looped_seconds, 3)},
    }
    print_table(f"P3 generation: {len(dataset)} eval examples, greedy, max_new_tokens {max_new_tokens}, "
                f"{device.type}", ["seconds", "cpu_seconds", "examples_per_second"], arms)
    print_goals({"examples/s, batched ÷ one by one": (round(ratio, 2), f"≥ {GOAL_RATIO:g}", ratio >= GOAL_RATIO),
                 "the same per CPU-second": (round(cpu_ratio, 2), f"≥ {GOAL_RATIO:g}", cpu_ratio >= GOAL_RATIO)})
    print(f"  identical answers: {identical:.0%} (reported, not a goal: padding may change a few greedy answers)")
    write_json(args.out, {
        "benchmark": "p3_generation", "model": str(args.model), "examples": len(dataset),
        "max_new_tokens": max_new_tokens, "batch_size": batch_size, "arms": arms, "speedup": round(ratio, 2),
        "speedup_goal_met": ratio >= GOAL_RATIO,
        "cpu_time_speedup": round(cpu_ratio, 2), "identical_fraction": round(identical, 4),
        "differing_examples": [i for i, (a, b) in enumerate(zip(batched, looped)) if a != b],
    })


if __name__ == "__main__":
    main()
