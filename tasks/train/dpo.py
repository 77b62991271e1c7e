"""Direct preference optimization (finetune.method dpo): TRL's DPOTrainer on the preference pairs the tokenize stage
wrote, with LoRA. The chat template's token rows are left as they are (tasks/train/adapters.py trains them for
supervised runs): TRL's DPOTrainer scores tokens through the output matrix itself (a fused head), which bypasses
PEFT's trainable rows, and the chosen and rejected answers end with the same tokens anyway. TRL is imported where it
runs: its imports cost seconds that the other methods do not need."""

from __future__ import annotations

from typing import Any

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments

from tasks.core.params import FinetuneParams
from tasks.model.loading import padding_id
from tasks.train.adapters import for_trl
from tasks.train.method import Method


def arguments(settings: dict[str, Any], params: FinetuneParams) -> TrainingArguments:
    from trl import DPOConfig

    return DPOConfig(
        **{**settings, "include_num_input_tokens_seen": "non_padding"},  # pairs are padded to the longest in a batch
        beta=params.dpo.beta,
        loss_type=[params.dpo.loss_type],
        max_length=None,  # the tokenize stage already cut each pair to tokenize.max_length (and counted it)
        padding_free=False,  # TRL has no padding-free DPO (benchmarks/RESULTS.md): batches pad to their longest
    )


def trainer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, train_set: Dataset,
                       args: TrainingArguments, params: FinetuneParams, callbacks: list[TrainerCallback]) -> Trainer:
    """TRL's DPOTrainer on the tokenize stage's pairs, with LoRA. The reference model is the base with the adapter
    disabled, or, starting from finetune.init_adapter, a frozen copy of that adapter (TRL adds it): never a second
    copy of the model in memory."""
    from trl import DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    class PretokenizedDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset: Dataset, *args: Any, **kwargs: Any) -> Dataset:
            # The tokenize stage already rendered each pair through the chat template, cut it to max_length and
            # counted what it cut; TRL's own preparation would tokenize the text again.
            return dataset

    pairs = DataCollatorForPreference(pad_token_id=padding_id(tokenizer))

    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        """A pair row (prompt and chosen answer in input_ids, split at prompt_length; the rejected answer's tokens)
        in TRL's terms."""
        return pairs([{"prompt_ids": row["input_ids"][:row["prompt_length"]],
                       "chosen_ids": row["input_ids"][row["prompt_length"]:],
                       "rejected_ids": row["rejected_ids"]} for row in rows])

    start, peft_config = for_trl(model, params)
    return PretokenizedDPOTrainer(
        model=start,
        args=args,
        train_dataset=train_set.select_columns(["input_ids", "prompt_length", "rejected_ids"]),
        data_collator=collate,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )


def summary(log_history: list[dict[str, float]]) -> dict[str, float]:
    """The last logged training-batch reward accuracy and margin (the implicit rewards against the reference)."""
    logged = [entry for entry in log_history if "rewards/accuracies" in entry]
    if not logged:
        return {}
    return {"train_reward_accuracy": round(float(logged[-1]["rewards/accuracies"]), 4),
            "train_reward_margin": round(float(logged[-1]["rewards/margins"]), 4)}


METHOD = Method(arguments, trainer, summary)
