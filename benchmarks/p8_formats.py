"""P8: training throughput by data format: chat and tool-calling SFT against instruction SFT on equal tokens per
step, DPO, and GRPO.

Each arm trains the real base model through the pipeline's own `tasks.train.training.train` (packed LoRA for the two
supervised formats, TRL's DPOTrainer for preference pairs) on its demo data, tokenized as the tokenize stage
does it, in a fresh process of its own. The chat and tools arms' batches are sized so that a step holds about as
many tokens as an instruction step (conversations are longer), so they differ only in what a batch holds: several
turns with the loss on each answer, against one question and answer. The tools arm (the tool-calling demo, tool
definitions, calls, results and reasoning traces in the Hermes convention) is tokenized at its example's
tokenize.max_length (640), which a whole conversation with its tools needs. DPO's figure counts the real (non-padding) tokens of
each pair's two sequences, prompt included twice, as TRL feeds them. GRPO's cost is the answers it samples: its row
adds answers generated per second and optimizer steps per minute, on the demo portfolio's classification prompts
(finetune.grpo as shipped but 8-token answers and the classification rewards).

    python -m benchmarks.p8_formats [--model models/base] [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from datasets import Dataset
from prefect.logging import disable_run_logger
from transformers import AutoTokenizer

from benchmarks.report import RESULTS_DIR, print_goals, print_table, write_json
from benchmarks.workload import BASE_DIR, REPO, pipeline_params
from tasks.cli import example_params
from tasks.core.params import DataParams, GrpoParams, Params
from tasks.data.tokenization import features_for, tokenize_rows
from tasks.formats.registry import FORMATS, format_of
from tasks.train.training import train

# arm -> (data.format, its demo file, finetune.method)
ARMS = {"instruction": ("instruction", "data/demo/train.jsonl", "lora"),
        "chat": ("chat", "data/demo_chat/train.jsonl", "lora"),
        "tools": ("tools", "data/demo_tools/train.jsonl", "lora"),
        "preference": ("preference", "data/demo_preference/train.jsonl", "dpo"),
        "grpo": ("instruction", "data/portfolio/classification/train.jsonl", "grpo")}
GRPO = GrpoParams(rewards={"accuracy": 1.0, "in_label_set": 0.2}, max_completion_length=8)
ROWS = 512  # training rows tokenized per arm: more than the steps take
GOAL_RATIO = 0.9  # chat SFT keeps at least 90% of instruction SFT's effective tokens/s


def arm_params(arm: str) -> Params:
    """params.yaml, or for the tools arm the tools example's (its tokenize.max_length fits a conversation)."""
    return Params.model_validate(yaml.safe_load(example_params(arm, REPO))) if arm == "tools" else pipeline_params()


def tokenized(model_dir: Path, arm: str) -> Dataset:
    """The arm's demo rows tokenized as the tokenize stage tokenizes a training split."""
    params = arm_params(arm)
    data_format, path, _ = ARMS[arm]
    data = DataParams(format=data_format, train=REPO / path, eval=REPO / path)
    frame = format_of(data_format).canonical(pd.read_json(data.train, lines=True).head(ROWS), data)
    rows = tokenize_rows({column: list(frame[column]) for column in frame.columns},
                         AutoTokenizer.from_pretrained(model_dir), data.shape, params.tokenize.system_prompt,
                         params.tokenize.max_length, train_on=params.tokenize.train_on)
    return Dataset.from_dict(rows, features=features_for(FORMATS[data_format].shape))


def run_arm(arm: str, model_dir: Path, steps: int, batch_size: int) -> dict[str, Any]:
    """Train one arm for `steps` steps here; its summary as the finetune stage writes it."""
    params = arm_params(arm)
    dataset = tokenized(model_dir, arm)
    finetune = params.finetune.model_copy(update={"method": ARMS[arm][2], "max_steps": steps,
                                                  "batch_size": batch_size, "save_steps": 10 * steps,
                                                  "logging_steps": 1, "grpo": GRPO})
    with tempfile.TemporaryDirectory() as out, disable_run_logger():
        _, summary = train(model_dir, dataset, finetune, params.seed, torch.device("cpu"), Path(out) / "checkpoints",
                           Path(out) / "live")
    lengths = [len(ids) for ids in dataset["input_ids"]]
    timings = summary.pop("timings")
    if finetune.method == "grpo":
        timings |= {"answers_per_second": round(steps * batch_size / timings["train_seconds"], 2),
                    "steps_per_minute": round(60 * steps / timings["train_seconds"], 2)}
    return {**timings, **summary, "arm": arm, "mean_example_tokens": round(sum(lengths) / len(lengths), 1)}


def run_arm_in_subprocess(arm: str, model_dir: Path, steps: int, batch_size: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{arm}.json"
        command = [sys.executable, "-m", "benchmarks.p8_formats", "--arm", arm, "--model", str(model_dir),
                   "--steps", str(steps), "--batch-size", str(batch_size), "--out", str(out)]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the {arm} arm failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return json.loads(out.read_text(encoding="utf-8"))


def mean_tokens(model_dir: Path, arm: str) -> float:
    """An arm's mean tokens per example, to size the conversation arms' batches."""
    dataset = tokenized(model_dir, arm)
    return sum(len(ids) for ids in dataset["input_ids"]) / len(dataset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=BASE_DIR, help="model directory (default models/base)")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per arm")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "p8_formats.json")
    parser.add_argument("--arm", choices=list(ARMS), help=argparse.SUPPRESS)  # internal: run one arm only
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    model_dir = args.model.resolve()
    if args.arm:
        args.out.write_text(json.dumps(run_arm(args.arm, model_dir, args.steps, args.batch_size)), encoding="utf-8")
        return
    batch = pipeline_params().finetune.batch_size
    instruction_tokens = mean_tokens(model_dir, "instruction")
    sizes = {"instruction": batch, "preference": batch, "grpo": batch,
             **{arm: max(1, round(batch * instruction_tokens / mean_tokens(model_dir, arm))) for arm in ("chat", "tools")}}
    arms = {arm: run_arm_in_subprocess(arm, model_dir, args.steps, size) for arm, size in sizes.items()}
    ratio = arms["chat"]["tokens_per_second"] / arms["instruction"]["tokens_per_second"]
    print_table(f"P8 training by data format and method: {args.steps} LoRA steps each, cpu",
                ["batch_size", "mean_example_tokens", "tokens_per_second", "train_seconds", "answers_per_second",
                 "steps_per_minute"], arms)
    print_goals({"effective tokens/s, chat SFT ÷ instruction SFT": (round(ratio, 2), f"≥ {GOAL_RATIO:g}",
                                                                     ratio >= GOAL_RATIO)})
    print(f"  effective tokens/s, tool-calling SFT ÷ instruction SFT: "
          f"{arms['tools']['tokens_per_second'] / arms['instruction']['tokens_per_second']:.2f}")
    write_json(args.out, {"benchmark": "p8_formats", "model": str(args.model), "steps": args.steps, "arms": arms,
                          "chat_to_instruction_ratio": round(ratio, 3), "ratio_goal_met": ratio >= GOAL_RATIO})


if __name__ == "__main__":
    main()
