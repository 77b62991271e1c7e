"""What a training method does its own way, behind one small interface; the loop that checkpoints, resumes, stops
when asked, halves the batch on out-of-memory and logs curves (tasks/train/training.py) is shared."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments

from tasks.core.params import FinetuneParams


@dataclass(frozen=True)
class Method:
    # The method's own arguments class (TrainingArguments, or TRL's config), from the settings every method shares.
    arguments: Callable[[dict[str, Any], FinetuneParams], TrainingArguments]
    # The Trainer that runs it on the tokenize stage's rows (model, tokenizer, rows, arguments, params, callbacks).
    trainer: Callable[[PreTrainedModel, PreTrainedTokenizerBase, Dataset, TrainingArguments, FinetuneParams,
                       list[TrainerCallback]], Trainer]
    # What the method adds to reports/training.json from the Trainer's log history.
    summary: Callable[[list[dict[str, float]]], dict[str, float]]
