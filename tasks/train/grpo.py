"""Reinforcement learning from verifiable rewards (finetune.method grpo): TRL's GRPOTrainer samples
finetune.grpo.generations answers to each training prompt, scores them with the rewards finetune.grpo.rewards names
(the task's own metrics against the reference answer, and format checks: tasks/train/rewards.py) and moves a LoRA
adapter towards the better ones of each group. The prompts are the tokenize stage's, rendered through the chat
template exactly as supervised training and evaluation render them. On a GPU with vLLM installed, TRL generates
through it. TRL is imported where it runs: its imports cost seconds the other methods do not need."""

from __future__ import annotations

import importlib.util
from typing import Any

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments

from tasks.core.params import FinetuneParams
from tasks.train.adapters import for_trl
from tasks.train.method import Method
from tasks.train.rewards import rewards, try_rewards

LOGGED = {"reward": "train_reward_mean", "reward_std": "train_reward_std", "kl": "train_kl",
          "completions/mean_length": "train_completion_length", "completions/clipped_ratio": "train_clipped_ratio"}


def arguments(settings: dict[str, Any], params: FinetuneParams) -> TrainingArguments:
    from trl import GRPOConfig

    grpo = params.grpo
    on_gpu = not settings["use_cpu"]
    return GRPOConfig(
        **{**settings, "include_num_input_tokens_seen": "no"},  # a step's cost is its generated answers
        num_generations=grpo.generations,
        max_completion_length=grpo.max_completion_length,
        temperature=grpo.temperature,
        beta=grpo.beta,
        loss_type=grpo.loss_type,
        reward_weights=list(grpo.rewards.values()),
        use_vllm=on_gpu and importlib.util.find_spec("vllm") is not None,
        vllm_mode="colocate",  # in this process, on the training GPU
    )


def trainer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, train_set: Dataset, args: TrainingArguments,
            params: FinetuneParams, callbacks: list[TrainerCallback]) -> Trainer:
    from trl import GRPOTrainer

    class PretokenizedGRPOTrainer(GRPOTrainer):
        def _tokenize_prompts(self, prompts: list) -> tuple[list[list[int]], None, dict[str, Any]]:
            # Each prompt is already the tokenize stage's rendering through the chat template, ending with the
            # assistant's header: TRL would render its text again.
            return [list(prompt) for prompt in prompts], None, {}

    prompts = train_set.map(lambda row: {"prompt": row["input_ids"][:row["prompt_length"]]},
                            remove_columns=[c for c in train_set.column_names if c not in ("response",)])
    functions, _ = rewards(params.grpo, sorted(set(train_set["response"])), tokenizer.eos_token_id)
    # Each reward once on a few reference answers, before any sampling: a custom reward that fails stops here.
    sample = prompts.select(range(min(4, len(prompts))))["response"]
    try_rewards(functions, sample, [tokenizer(text)["input_ids"] for text in sample], sample)
    start, peft_config = for_trl(model, params)
    return PretokenizedGRPOTrainer(
        model=start,
        reward_funcs=functions,
        args=args,
        train_dataset=prompts,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )


def summary(log_history: list[dict[str, float]]) -> dict[str, float]:
    """The last logged reward (mean and spread within groups), KL, answer length and share of answers cut at
    max_completion_length."""
    logged = [entry for entry in log_history if "reward" in entry]
    if not logged:
        return {}
    return {name: round(float(logged[-1][key]), 4) for key, name in LOGGED.items() if key in logged[-1]}


METHOD = Method(arguments, trainer, summary)
