"""The training loop every method shares: checkpoints and resuming, Ctrl-C, halving the batch on CUDA
out-of-memory, DVCLive curves, the run's summary and the atomic write of the result. What a method does its own way
(its Trainer, its arguments, what it adds to the summary) is its module's: tasks/train/methods.py lists them."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from datasets import Dataset, concatenate_datasets
from dvclive import Live
from peft import PeftModel
from prefect import get_run_logger
from prefect.exceptions import MissingContextError
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    set_seed,
)
from transformers.integrations import DVCLiveCallback

from tasks.core.atomic_dir import staging_dir, write_dir_atomically
from tasks.core.errors import UserError
from tasks.core.interrupts import RERUN, STOP_REQUESTED, Interrupted
from tasks.core.params import FinetuneParams
from tasks.model.loading import load_model
from tasks.train.flops import mfu, peak_flops, training_flops_per_token
from tasks.train.methods import method_of

FINGERPRINT_FILE = "fingerprint.json"
COMPLETE_MARKER = "tailor-complete"  # written into a checkpoint after everything else: it is whole
T = TypeVar("T")


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or the only process: the one that writes outputs."""
    return int(os.environ.get("RANK", "0")) == 0


def log() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The Prefect run logger inside a flow (shown in the UI); a plain logger in a torchrun training process."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("tailor.training")


class MarkCompleteCheckpoints(TrainerCallback):
    """The Trainer writes a checkpoint file by file; a kill midway leaves a folder that looks like one.

    on_save runs after the checkpoint is fully written, so the marker it adds separates whole checkpoints
    from partial ones, which `prepare_checkpoints` removes.
    """

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            (Path(args.output_dir) / f"checkpoint-{state.global_step}" / COMPLETE_MARKER).touch()


class StopWhenAsked(TrainerCallback):
    """After SIGINT/SIGTERM (tasks/core/interrupts.py), stop at the end of the current step, before any checkpoint is
    begun. Every process stops at the same step: the flags are combined across processes, because a process that
    stopped alone would leave the others waiting in their next all-reduce."""

    def __init__(self) -> None:
        self.stopped_at: int | None = None

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        asked = STOP_REQUESTED.is_set()
        if torch.distributed.is_initialized():
            flag = torch.tensor([int(asked)], device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            asked = bool(flag.item())
        if asked:
            control.should_training_stop = True
            control.should_save = False
            self.stopped_at = state.global_step


class TrainingCurves(DVCLiveCallback):
    """DVCLive's callback with the training step as the curves' x. Its own counts the points logged, which is the
    step only when logging_steps is 1, and after a resume goes on counting from the interrupted run's last point.

    The curves are a DVC output, so they hold only what a re-run reproduces: the Trainer's wall-clock entries
    (runtime, samples/steps/tokens per second) differ on every run and would change dvc.lock each time."""

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and self.live is not None:
            self.live.step = state.global_step
        kept = {k: v for k, v in (logs or {}).items() if not is_timing(k)}
        super().on_log(args, state, control, logs=kept, **kwargs)


def is_timing(name: str) -> bool:
    """A Trainer log entry measured by the clock: train_runtime, train_tokens_per_second, eval_samples_per_second…"""
    return name.endswith(("runtime", "_per_second", "step_time"))  # step_time: GRPO's seconds per step


def curves_until(live_dir: Path, step: int) -> None:
    """Drop the curve points past `step`: those an interrupted run logged after the checkpoint the run resumes
    from, which the resumed run logs again."""
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        header, *rows = tsv.read_text(encoding="utf-8").splitlines(keepends=True)
        column = header.rstrip("\n").split("\t").index("step")
        kept = [row for row in rows if int(row.split("\t")[column]) <= step]
        tsv.write_text(header + "".join(kept), encoding="utf-8")


class StopOnNonFiniteLoss(TrainerCallback):
    """A NaN or infinite loss ruins every later step; stop at once so nothing is saved or promoted."""

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise UserError(f"training loss became {loss} by step {state.global_step}; lower finetune.learning_rate "
                            "(or check the data); no adapter was written and nothing was promoted")


def with_replay(train_set: Dataset, replay: Dataset, replay_pct: float, seed: int) -> Dataset:
    """The train set plus general-text chunks making up replay_pct% of the result, drawn with a seeded generator
    (with replacement when more are needed than there are): replay, the standard remedy for forgetting. The
    Trainer's sampler shuffles them in among the examples."""
    count = round(len(train_set) * replay_pct / (100 - replay_pct))
    draw = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(replay), (count,), generator=draw).tolist()
    return concatenate_datasets([train_set, replay.select(picks)])


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


def prepare_checkpoints(checkpoints_dir: Path, fingerprint: str, on_change: str) -> None:
    """Keep only complete checkpoints made from these inputs; under torchrun rank 0 tidies while the others wait."""
    if is_main_process():
        discard_unusable_checkpoints(checkpoints_dir, fingerprint, on_change)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def latest_complete_checkpoint(checkpoints_dir: Path, max_steps: int) -> Path | None:
    """The newest checkpoint marked complete and short of max_steps, to resume from; None to start afresh.

    A checkpoint at max_steps itself is passed over: the Trainer resumed there takes one step too many
    (transformers 5), so the run resumes from the one before and ends exactly where an uninterrupted run ends.
    """
    complete = sorted((int(p.name.split("-")[-1]), p) for p in checkpoints_dir.glob("checkpoint-*")
                      if (p / COMPLETE_MARKER).is_file())
    usable = [path for step, path in complete if step < max_steps]
    if usable:
        log().info("resuming from %s, the last complete checkpoint", usable[-1])
    return usable[-1] if usable else None


def discard_unusable_checkpoints(checkpoints_dir: Path, fingerprint: str, on_change: str) -> None:
    """Remove checkpoints made from other data or params (or refuse to), and any not completely written."""
    recorded = checkpoints_dir / FINGERPRINT_FILE
    if checkpoints_dir.is_dir() and (not recorded.is_file() or recorded.read_text() != fingerprint):
        if on_change == "refuse" and any(checkpoints_dir.glob("checkpoint-*")):
            raise UserError(f"the checkpoints in {checkpoints_dir} were made with other data or params, and "
                            "finetune.on_input_change is refuse; restore the inputs they were made with to resume, "
                            f"or delete {checkpoints_dir} (or set on_input_change: restart) to start fresh")
        log().info("checkpoints in %s were made with other data or params; starting fresh", checkpoints_dir)
        shutil.rmtree(checkpoints_dir)
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    recorded.write_text(fingerprint)
    for partial in checkpoints_dir.glob("checkpoint-*"):
        if not (partial / COMPLETE_MARKER).is_file():
            log().info("removing %s: it was not completely written (the run was interrupted while saving)", partial)
            shutil.rmtree(partial)


def training_arguments(params: FinetuneParams, checkpoints_dir: Path, device: torch.device, seed: int,
                       batch_size: int, accumulation: int) -> TrainingArguments:
    """The Trainer settings every method shares (steps, schedule, checkpoints, precision, seeds), in the
    arguments class of the method."""
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    settings: dict[str, Any] = dict(
        output_dir=str(checkpoints_dir),
        max_steps=params.max_steps,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
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
        gradient_checkpointing=params.gradient_checkpointing,
        ddp_find_unused_parameters=False,  # LoRA freezes most weights on purpose; skip DDP's search for them
        **fsdp_arguments(params),
    )
    return method_of(params).arguments(settings, params)


def fsdp_arguments(params: FinetuneParams) -> dict[str, Any]:
    """FSDP shards weights, gradients and optimizer state across the processes (for models one GPU cannot hold)."""
    if params.strategy != "fsdp":
        return {}
    # use_orig_params lets FSDP wrap a LoRA model whose frozen and trainable weights share a layer.
    return {"fsdp": "full_shard auto_wrap", "fsdp_config": {"use_orig_params": True}}


def halve_batch_on_oom(run: Callable[[int, int], T], batch_size: int, accumulation: int) -> T:
    """Call run(batch, accumulation); on CUDA out-of-memory halve the batch and double the accumulation.

    The effective batch (batch x accumulation) stays the same, so the training recipe does not change.
    """
    while True:
        try:
            return run(batch_size, accumulation)
        except torch.cuda.OutOfMemoryError as exc:
            if batch_size == 1:
                raise UserError("CUDA ran out of memory even at finetune.batch_size 1; use a smaller base model, "
                                "finetune.method lora, finetune.gradient_checkpointing true, "
                                "or a shorter tokenize.max_length") from exc
            effective = batch_size * accumulation
            batch_size = batch_size // 2 if batch_size % 2 == 0 else 1
            accumulation = effective // batch_size
            torch.cuda.empty_cache()
            log().warning("CUDA out of memory: retrying from the last complete checkpoint with batch_size %d and "
                          "gradient_accumulation_steps %d (the same effective batch)", batch_size, accumulation)


def train(base_dir: Path, train_set: Dataset, params: FinetuneParams, seed: int, device: torch.device,
          checkpoints_dir: Path, live_dir: Path) -> tuple[Trainer, dict[str, float]]:
    """Train to max_steps from the newest complete checkpoint or base_dir, halving the batch on CUDA OOM."""

    def attempt(batch_size: int, accumulation: int) -> tuple[Trainer, dict[str, float]]:
        # Each attempt loads the weights afresh, so a retry after OOM carries nothing over from the failed one.
        set_seed(seed)
        model, tokenizer = load_model(base_dir, device)
        args = training_arguments(params, checkpoints_dir, device, seed, batch_size, accumulation)
        resume_from = latest_complete_checkpoint(checkpoints_dir, params.max_steps)
        return run_trainer(model, tokenizer, train_set, args, params, resume_from, live_dir)

    return halve_batch_on_oom(attempt, params.batch_size, params.gradient_accumulation_steps)


def run_trainer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, train_set: Dataset,
                args: TrainingArguments, params: FinetuneParams, resume_from: Path | None,
                live_dir: Path) -> tuple[Trainer, dict[str, float]]:
    """One Trainer run of the method finetune.method names; DVCLive curves and checkpoint markers come from rank 0
    only."""
    stop = StopWhenAsked()
    callbacks: list[TrainerCallback] = [MarkCompleteCheckpoints(), StopOnNonFiniteLoss(), stop]
    if is_main_process():
        if resume_from is not None:
            curves_until(live_dir, steps_at(resume_from))
        live = Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None, resume=resume_from is not None)
        callbacks.append(TrainingCurves(live=live))
    method = method_of(params)
    trainer = method.trainer(model, tokenizer, train_set, args, params, callbacks)
    # Read before training: checkpoint rotation may delete resume_from while the run goes on.
    tokens_before = tokens_seen_at(resume_from)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.perf_counter() - started
    if stop.stopped_at is not None:
        kept = latest_complete_checkpoint(Path(args.output_dir), params.max_steps)
        raise Interrupted(f"interrupted at step {stop.stopped_at} of {params.max_steps}; {RERUN} resumes "
                          + (f"from {kept}" if kept else "from the start (no checkpoint was complete yet)"))
    tokens = trainer.state.num_input_tokens_seen - tokens_before  # summed over all processes
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    tokens_per_second = tokens / seconds
    summary = {
        "train_loss": round(float(result.training_loss), 5),
        "final_loss": round(float(losses[-1]), 5) if losses else float("nan"),
        "steps": trainer.state.global_step,
        "tokens_trained": trainer.state.num_input_tokens_seen,
        "processes": args.world_size,
        "batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        **method.summary(trainer.state.log_history),
        # What this machine measured: it differs on every run, so the stage writes it apart from the summary.
        "timings": {"train_seconds": round(seconds, 2), "tokens_per_second": round(tokens_per_second, 2),
                    **utilization(trainer.model, tokens_per_second, args.world_size)},
    }
    return trainer, summary


def utilization(model: PreTrainedModel, tokens_per_second: float, processes: int) -> dict[str, float]:
    """Model FLOPs utilization on CUDA (see tasks/train/flops.py for the FLOPs-per-token count); empty elsewhere."""
    peak = peak_flops(next(model.parameters()).device)
    if peak is None:
        return {}
    per_token = training_flops_per_token(model)
    return {"flops_per_token": per_token, "mfu": round(mfu(tokens_per_second / processes, per_token, peak), 4)}


def trainer_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))


def tokens_seen_at(checkpoint: Path | None) -> int:
    """Tokens the Trainer had consumed when `checkpoint` was written (0 for a fresh start)."""
    return 0 if checkpoint is None else int(trainer_state(checkpoint).get("num_input_tokens_seen", 0))


def steps_at(checkpoint: Path) -> int:
    """The training step `checkpoint` was written at."""
    return int(trainer_state(checkpoint)["global_step"])


def sort_module_sets(config: Path) -> None:
    """PEFT keeps target_modules (and exclude_modules) as sets and writes them in set order, which changes with
    Python's per-process string hashing: the same adapter would get other bytes, and another dvc.lock hash, on
    every run. Sorted, they are the same every time."""
    if not config.is_file():
        return  # a full model
    settings = json.loads(config.read_text(encoding="utf-8"))
    for key in ("target_modules", "exclude_modules"):
        if isinstance(settings.get(key), list):
            settings[key] = sorted(settings[key])
    config.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_trained(trainer: Trainer, out_dir: Path) -> None:
    """Write the adapter (or the full model) as safetensors, swapped in whole by rank 0.

    Every process must call it: under FSDP, saving gathers the weight shards from all of them.
    """

    if isinstance(trainer.model, PeftModel) and "ref" in trainer.model.peft_config:
        # The frozen reference copy of finetune.init_adapter that DPOTrainer adds is not part of the result.
        trainer.model.delete_adapter("ref")

    def write(staging: Path) -> None:
        trainer.save_model(str(staging))  # the Trainer writes only on rank 0
        # The Trainer adds its arguments as a pickle; the adapter directory stays safetensors and JSON only.
        (staging / "training_args.bin").unlink(missing_ok=True)
        sort_module_sets(staging / "adapter_config.json")

    if is_main_process():
        write_dir_atomically(out_dir, write)
    else:
        trainer.save_model(str(staging_dir(out_dir)))  # joins the gather; the Trainer writes nothing here
