"""Supervised fine-tuning (finetune.method lora or full): the transformers Trainer on packed, padding-free batches of
the tokenize stage's rows, the loss on the answer's tokens only (the labels say which)."""

from __future__ import annotations

from typing import Any

from datasets import Dataset
from transformers import (
    DataCollatorWithFlattening,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from tasks.core.params import FinetuneParams
from tasks.train.adapters import with_lora
from tasks.train.method import Method


def arguments(settings: dict[str, Any], params: FinetuneParams) -> TrainingArguments:
    return TrainingArguments(**settings)


def trainer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, train_set: Dataset, args: TrainingArguments,
            params: FinetuneParams, callbacks: list[TrainerCallback]) -> Trainer:
    model = with_lora(model, params)
    # Without a KV cache the model reads position_ids resets as sequence boundaries, which is what keeps packed
    # examples from attending to each other.
    model.config.use_cache = False
    return Trainer(
        model=model,
        args=args,
        train_dataset=train_set.select_columns(["input_ids", "labels"]),
        data_collator=DataCollatorWithFlattening(return_position_ids=True),
        callbacks=callbacks,
    )


def summary(log_history: list[dict[str, float]]) -> dict[str, float]:
    return {}  # the loss curve is the loop's


METHOD = Method(arguments, trainer, summary)
