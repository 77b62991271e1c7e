"""Fine-tuning: LoRA (or full) training with the transformers Trainer on packed, padding-free batches."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from dvclive import Live
from peft import LoraConfig, get_peft_model
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from transformers import (
    DataCollatorWithFlattening,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    set_seed,
)
from transformers.integrations import DVCLiveCallback

from tasks.atomic_dir import write_dir_atomically
from tasks.errors import UserError
from tasks.params import FinetuneParams

FINGERPRINT_FILE = "fingerprint.json"
COMPLETE_MARKER = "tailor-complete"  # written into a checkpoint after everything else: it is whole


class MarkCompleteCheckpoints(TrainerCallback):
    """The Trainer writes a checkpoint file by file; a kill midway leaves a folder that looks like one.

    on_save runs after the checkpoint is fully written, so the marker it adds separates whole checkpoints
    from partial ones, which `resume_checkpoint` skips.
    """

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            (Path(args.output_dir) / f"checkpoint-{state.global_step}" / COMPLETE_MARKER).touch()


class StopOnNonFiniteLoss(TrainerCallback):
    """A NaN or infinite loss ruins every later step; stop at once so nothing is saved or promoted."""

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise UserError(f"training loss became {loss} by step {state.global_step}; lower finetune.learning_rate "
                            "(or check the data); no adapter was written and nothing was promoted")


def with_lora(model: PreTrainedModel, params: FinetuneParams) -> PreTrainedModel:
    """Wrap the model with LoRA adapters (or leave it whole for full fine-tuning)."""
    if params.method == "full":
        return model
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=params.lora.r,
        lora_alpha=params.lora.alpha,
        lora_dropout=params.lora.dropout,
        target_modules=list(params.lora.target_modules),
    )
    return get_peft_model(model, config)


def training_fingerprint(params: FinetuneParams, seed: int, inputs: list[Path]) -> str:
    """Hash of everything a checkpoint depends on: training params, seed and the bytes of the inputs."""
    digest = hashlib.sha256(json.dumps([params.model_dump(mode="json"), seed]).encode())
    for root in inputs:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            digest.update(path.relative_to(root).as_posix().encode())
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


@task(cache_policy=NO_CACHE)
def resume_checkpoint(checkpoints_dir: Path, fingerprint: str) -> Path | None:
    """The last checkpoint of an interrupted run with the same inputs, or None (stale ones are removed)."""
    recorded = checkpoints_dir / FINGERPRINT_FILE
    logger = get_run_logger()
    if checkpoints_dir.is_dir() and (not recorded.is_file() or recorded.read_text() != fingerprint):
        logger.info("checkpoints in %s were made with other data or params; starting fresh", checkpoints_dir)
        shutil.rmtree(checkpoints_dir)
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    recorded.write_text(fingerprint)
    found = sorted(checkpoints_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    for partial in [p for p in found if not (p / COMPLETE_MARKER).is_file()]:
        logger.info("removing %s: it was not completely written (the run was interrupted while saving)", partial)
        shutil.rmtree(partial)
    complete = [p for p in found if (p / COMPLETE_MARKER).is_file()]
    if complete:
        logger.info("resuming from %s, the last complete checkpoint", complete[-1])
    return complete[-1] if complete else None


def training_arguments(params: FinetuneParams, checkpoints_dir: Path, device: torch.device,
                       seed: int) -> TrainingArguments:
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return TrainingArguments(
        output_dir=str(checkpoints_dir),
        max_steps=params.max_steps,
        per_device_train_batch_size=params.batch_size,
        gradient_accumulation_steps=params.gradient_accumulation_steps,
        learning_rate=params.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=params.warmup_ratio,  # a float below 1 is read as a fraction of max_steps
        weight_decay=params.weight_decay,
        logging_steps=params.logging_steps,
        save_steps=params.save_steps,
        save_total_limit=2,
        bf16=use_bf16,
        use_cpu=device.type == "cpu",
        seed=seed,
        data_seed=seed,
        report_to=[],  # the DVCLive callback is added explicitly, so nothing else is picked up from the env
        remove_unused_columns=False,
        dataloader_num_workers=0,
        include_num_input_tokens_seen="all",  # packed batches hold no padding, so all tokens are real
        logging_nan_inf_filter=False,  # the default hides NaN losses from the logs; StopOnNonFiniteLoss needs them
    )


@task(cache_policy=NO_CACHE)
def train(model: PreTrainedModel, train_set: Dataset, params: FinetuneParams, seed: int, device: torch.device,
          checkpoints_dir: Path, resume_from: Path | None, live_dir: Path) -> tuple[PreTrainedModel, dict[str, float]]:
    """Run the Trainer to max_steps (resuming if asked); log curves with DVCLive; return model and summary."""
    set_seed(seed)
    model = with_lora(model, params)
    # Without a KV cache the model reads position_ids resets as sequence boundaries, which is what
    # keeps packed examples from attending to each other.
    model.config.use_cache = False
    live = Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None, resume=resume_from is not None)
    trainer = Trainer(
        model=model,
        args=training_arguments(params, checkpoints_dir, device, seed),
        train_dataset=train_set.select_columns(["input_ids", "labels"]),
        data_collator=DataCollatorWithFlattening(return_position_ids=True),
        callbacks=[DVCLiveCallback(live=live), MarkCompleteCheckpoints(), StopOnNonFiniteLoss()],
    )
    # Read before training: checkpoint rotation may delete resume_from while the run goes on.
    tokens_before = tokens_seen_at(resume_from)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.perf_counter() - started
    tokens = trainer.state.num_input_tokens_seen - tokens_before
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    summary = {
        "train_loss": round(float(result.training_loss), 5),
        "final_loss": round(float(losses[-1]), 5) if losses else float("nan"),
        "steps": trainer.state.global_step,
        "train_seconds": round(seconds, 2),
        "tokens_per_second": round(tokens / seconds, 2),
    }
    return trainer.model, summary


def tokens_seen_at(checkpoint: Path | None) -> int:
    """Tokens the Trainer had consumed when `checkpoint` was written (0 for a fresh start)."""
    if checkpoint is None:
        return 0
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    return int(state.get("num_input_tokens_seen", 0))


@task(cache_policy=NO_CACHE)
def save_trained(model: PreTrainedModel, out_dir: Path) -> Path:
    """Write the adapter (or the full model) as safetensors, swapped in whole."""
    return write_dir_atomically(out_dir, model.save_pretrained)
