"""P1: the pipeline's packed, padding-free LoRA training against the seed recipe (every example padded to 512).

Both arms: the same model, the same tokenized demo train split, the same LoRA settings, learning rate, seed, batch
size and number of steps, built from tasks.train.training's own functions. The Trainer samples the same examples for
each step in both arms (same seed, same dataset length), and both compute the loss on the response tokens only,
so the only difference is how a batch is laid out. Each arm runs in its own process: its peak RSS is its own and
neither warms the other.

    python -m benchmarks.p1_training [--model models/base] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import (
    DataCollatorWithFlattening,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    default_data_collator,
    set_seed,
)
from transformers.trainer_utils import SaveStrategy

from benchmarks.report import RESULTS_DIR, print_goals, print_table, write_json
from benchmarks.workload import BASE_DIR, REPO, pipeline_params, tokenized_split
from tasks.data.tokenization import IGNORE_INDEX
from tasks.model.loading import load_model, padding_id, pick_device
from tasks.train.adapters import with_lora
from tasks.train.training import training_arguments

RECIPES = ("packed", "padded")
SEED_MAX_LENGTH = 512  # the seed recipe: tokenizer(..., padding="max_length", max_length=512)
GOAL_RATIO = 4.0
LOSS_TOLERANCE = 0.01  # "no worse": within 1 % of the seed recipe's mean loss (dropout draws differ per layout)


class CountingCollator:
    """Wraps a collator and records each batch's real (attention_mask == 1) and total tokens, in batch order."""

    def __init__(self, collate: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> None:
        self.collate = collate
        self.batches: list[tuple[int, int]] = []

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(features)
        total = batch["input_ids"].numel()
        # A packed batch has no attention mask: every token in it is real.
        real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else total
        self.batches.append((real, total))
        return batch


class StepClock(TrainerCallback):
    """Wall and CPU time at the end of each optimizer step; throughput is measured from the first to the last.

    CPU time counts only this process's work, so on a machine shared with other jobs it varies less than wall time.
    """

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.cpu_ends: list[float] = []

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        self.ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())


def padded_to(dataset: Dataset, pad_id: int, max_length: int) -> Dataset:
    """The seed recipe's layout: each example padded on the right to max_length, padding masked out."""
    def pad(row: dict[str, list[int]]) -> dict[str, list[int]]:
        fill = max_length - len(row["input_ids"])
        return {"input_ids": row["input_ids"] + [pad_id] * fill,
                "attention_mask": [1] * len(row["input_ids"]) + [0] * fill,
                "labels": row["labels"] + [IGNORE_INDEX] * fill}
    return dataset.map(pad, remove_columns=dataset.column_names)


def recipe_batches(recipe: str, dataset: Dataset, pad_id: int) -> tuple[Dataset, CountingCollator]:
    """The train set and collator of one recipe: packed with position_ids resets, or padded to 512."""
    if recipe == "packed":
        return dataset.select_columns(["input_ids", "labels"]), CountingCollator(
            DataCollatorWithFlattening(return_position_ids=True))
    return padded_to(dataset, pad_id, SEED_MAX_LENGTH), CountingCollator(default_data_collator)


def run_arm(recipe: str, model_dir: Path, steps: int) -> dict[str, Any]:
    """Train one recipe for `steps` steps in this process; its throughput, losses and peak RSS."""
    params = pipeline_params()
    finetune = params.finetune.model_copy(update={"max_steps": steps, "logging_steps": 1})
    device = pick_device(finetune.device)
    model, tokenizer = load_model(model_dir, device)
    train_set, collator = recipe_batches(recipe, tokenized_split(model_dir, "train", params), padding_id(tokenizer))
    set_seed(params.seed)
    model = with_lora(model, finetune)
    model.config.use_cache = False  # as in tasks.train.training.train: position_ids resets separate packed examples
    clock = StepClock()
    with tempfile.TemporaryDirectory() as out_dir:
        args = training_arguments(finetune, Path(out_dir), device, params.seed, finetune.batch_size,
                                  finetune.gradient_accumulation_steps)
        args.save_strategy = SaveStrategy.NO  # checkpoint writes are not what is measured
        args.disable_tqdm = True
        trainer = Trainer(model=model, args=args, train_dataset=train_set, data_collator=collator, callbacks=[clock])
        result = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    # The first step pays one-off costs (allocations, lazy inits); throughput is over the steps after it.
    timed = collator.batches[1:steps]
    seconds = clock.ends[-1] - clock.ends[0]
    step_seconds = [b - a for a, b in zip(clock.ends, clock.ends[1:])]
    return {
        "recipe": recipe,
        "steps": trainer.state.global_step,
        "batch_size": finetune.batch_size,
        "timed_seconds": round(seconds, 2),
        "effective_tokens_per_second": round(sum(real for real, _ in timed) / seconds, 2),
        "total_tokens_per_second": round(sum(total for _, total in timed) / seconds, 2),
        "effective_tokens_per_cpu_second": round(
            sum(real for real, _ in timed) / (clock.cpu_ends[-1] - clock.cpu_ends[0]), 2),
        # On a shared machine other jobs stretch some steps; the median step is the robust figure.
        "median_step_effective_tokens_per_second": round(
            statistics.median(real / s for (real, _), s in zip(timed, step_seconds)), 2),
        "padding_pct": round(100 * (1 - sum(r for r, _ in timed) / sum(t for _, t in timed)), 2),
        "real_tokens_per_step": [real for real, _ in collator.batches[:steps]],
        "mean_loss": round(statistics.fmean(losses), 5),
        "last_loss": round(losses[-1], 5),
        "train_loss": round(float(result.training_loss), 5),
        "losses": [round(loss, 5) for loss in losses],
        "step_seconds": [round(s, 2) for s in step_seconds],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # Linux: KiB
        "device": device.type,
    }


def run_arm_in_subprocess(recipe: str, model_dir: Path, steps: int) -> dict[str, Any]:
    """One arm in a fresh interpreter, so peak RSS and warm caches belong to that arm alone."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{recipe}.json"
        command = [sys.executable, "-m", "benchmarks.p1_training", "--arm", recipe, "--model", str(model_dir),
                   "--steps", str(steps), "--out", str(out)]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the {recipe} arm failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return json.loads(out.read_text(encoding="utf-8"))


def compare(arms: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The headline figures: effective throughput ratio and loss at equal steps."""
    packed, padded = arms["packed"], arms["padded"]
    ratio = packed["effective_tokens_per_second"] / padded["effective_tokens_per_second"]
    median_ratio = (packed["median_step_effective_tokens_per_second"]
                    / padded["median_step_effective_tokens_per_second"])
    cpu_ratio = packed["effective_tokens_per_cpu_second"] / padded["effective_tokens_per_cpu_second"]
    return {
        "effective_tokens_per_second_ratio": round(ratio, 2),
        "cpu_time_ratio": round(cpu_ratio, 2),
        "median_step_ratio": round(median_ratio, 2),
        "ratio_goal_met": ratio >= GOAL_RATIO,
        "loss_no_worse": packed["mean_loss"] <= padded["mean_loss"] * (1 + LOSS_TOLERANCE),
        "same_examples_per_step": packed["real_tokens_per_step"] == padded["real_tokens_per_step"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=BASE_DIR, help="model directory (default models/base)")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per arm (at least 2)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "p1_training.json")
    parser.add_argument("--arm", choices=RECIPES, help=argparse.SUPPRESS)  # internal: run one arm only
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step is not timed")
    if args.arm:
        args.out.write_text(json.dumps(run_arm(args.arm, args.model.resolve(), args.steps)), encoding="utf-8")
        return
    arms = {recipe: run_arm_in_subprocess(recipe, args.model.resolve(), args.steps) for recipe in RECIPES}
    summary = compare(arms)
    columns = ["effective_tokens_per_second", "median_step_effective_tokens_per_second",
               "effective_tokens_per_cpu_second", "total_tokens_per_second", "padding_pct", "mean_loss", "last_loss",
               "peak_rss_mib"]
    print_table(f"P1 training: {args.steps} LoRA steps, batch {arms['packed']['batch_size']}, "
                f"{arms['packed']['device']}", columns, arms)
    print_goals({
        "effective tokens/s, packed ÷ padded": (summary["effective_tokens_per_second_ratio"], f"≥ {GOAL_RATIO:g}",
                                                summary["ratio_goal_met"]),
        "the same from the median step": (summary["median_step_ratio"], f"≥ {GOAL_RATIO:g}",
                                          summary["median_step_ratio"] >= GOAL_RATIO),
        "the same per CPU-second": (summary["cpu_time_ratio"], f"≥ {GOAL_RATIO:g}",
                                    summary["cpu_time_ratio"] >= GOAL_RATIO),
        "mean loss, packed vs padded": (f"{arms['packed']['mean_loss']} vs {arms['padded']['mean_loss']}",
                                        "no worse", summary["loss_no_worse"]),
    })
    write_json(args.out, {"benchmark": "p1_training", "model": str(args.model), "steps": args.steps,
                          "arms": arms, **summary})


if __name__ == "__main__":
    main()
