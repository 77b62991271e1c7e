"""Tokenization: the base model's chat template, loss on response tokens only (all tokens of plain text), no
padding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from datasets import Dataset
from prefect import task
from prefect.cache_policies import NO_CACHE
from transformers import PreTrainedTokenizerBase

from tasks.errors import UserError

IGNORE_INDEX = -100  # label value the loss skips: prompt tokens are context, not targets
# What the in-context baselines show before an example: (question, answer) turns, or plain-text passages.
Context = Sequence[tuple[str, str]] | Sequence[str]


@dataclass(frozen=True)
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    prompt_length: int  # tokens before the response; generation starts here
    truncated: bool


def chat_messages(prompt: str, system_prompt: str | None,
                  examples: Sequence[tuple[str, str]] = ()) -> list[dict[str, str]]:
    """The conversation before the answer: optional system prompt, example turns (few-shot), the question."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    shots = [{"role": role, "content": text} for question, answer in examples
             for role, text in (("user", question), ("assistant", answer))]
    return system + shots + [{"role": "user", "content": prompt}]


def tokenize_instruction(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str,
                         system_prompt: str | None, max_length: int,
                         examples: Sequence[tuple[str, str]] = ()) -> Tokenized:
    """Format one example with the chat template; only the assistant's answer carries labels."""
    messages = chat_messages(prompt, system_prompt, examples)
    prompt_ids = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True)["input_ids"])
    full_ids = list(tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}],
                                                  tokenize=True, return_dict=True)["input_ids"])
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise UserError("the base model's chat template renders the prompt differently once an answer follows; "
                        "response-only loss needs a template where the prompt is a prefix (e.g. ChatML)")
    labels = [IGNORE_INDEX] * len(prompt_ids) + full_ids[len(prompt_ids):]
    return Tokenized(full_ids[:max_length], labels[:max_length], min(len(prompt_ids), max_length),
                     len(full_ids) > max_length)


def tokenize_text(tokenizer: PreTrainedTokenizerBase, text: str, max_length: int,
                  context: Sequence[str] = ()) -> list[Tokenized]:
    """Plain text for domain adaptation: every token is a target; long texts become max_length chunks.

    `context` passages (fixed or retrieved training passages, for the in-context baselines) go before each chunk,
    each cut to max_length tokens, as unscored tokens. The chunk's first token is then left unscored too: without
    context it has nothing before it to be predicted from, and every approach must be scored on the same tokens.
    """
    ids = list(tokenizer(text)["input_ids"]) + [tokenizer.eos_token_id]
    separator = list(tokenizer("\n\n")["input_ids"])
    prefix = [t for passage in context for t in list(tokenizer(passage)["input_ids"])[:max_length] + separator]
    pieces = []
    for start in range(0, len(ids), max_length):
        chunk = ids[start:start + max_length]
        labels = [IGNORE_INDEX] * (len(prefix) + 1) + chunk[1:] if prefix else chunk
        pieces.append(Tokenized(prefix + chunk, labels, len(prefix), False))
    return pieces


@task(cache_policy=NO_CACHE)
def tokenize_split(tokenizer: PreTrainedTokenizerBase, frame: pd.DataFrame, data_format: str,
                   system_prompt: str | None, max_length: int, contexts: Sequence[Context] | None = None) -> Dataset:
    """Tokenize one split; instruction rows keep their prompt and reference answer for evaluation.

    `contexts[i]`, when given, is what the in-context baselines show before row i: (question, answer) turns for
    instruction data, passages for plain text.
    """
    rows: dict[str, list] = {"input_ids": [], "labels": [], "prompt_length": [], "truncated": [],
                             "prompt": [], "response": []}
    for i, record in enumerate(frame.to_dict("records")):
        context = contexts[i] if contexts is not None else ()
        if data_format == "instruction":
            pieces = [tokenize_instruction(tokenizer, record["prompt"], record["response"], system_prompt,
                                           max_length, context)]
            prompt, response = record["prompt"], record["response"]
        else:
            pieces = tokenize_text(tokenizer, record["text"], max_length, context)
            prompt, response = "", ""
        for piece in pieces:
            rows["input_ids"].append(piece.input_ids)
            rows["labels"].append(piece.labels)
            rows["prompt_length"].append(piece.prompt_length)
            rows["truncated"].append(piece.truncated)
            rows["prompt"].append(prompt)
            rows["response"].append(response)
    return Dataset.from_dict(rows)


def token_stats(dataset: Dataset, max_length: int) -> dict[str, float]:
    """What the split costs to train on; padding is zero because batches are packed, not padded."""
    lengths = [len(ids) for ids in dataset["input_ids"]]
    targets = sum(sum(1 for label in labels if label != IGNORE_INDEX) for labels in dataset["labels"])
    tokens = sum(lengths)
    return {
        "examples": len(lengths),
        "tokens": tokens,
        "target_tokens": targets,
        "mean_length": round(tokens / max(len(lengths), 1), 2),
        "max_length": max(lengths, default=0),
        "truncated_pct": round(100 * sum(dataset["truncated"]) / max(len(lengths), 1), 3),
        "padding_pct": 0.0,
        # What a recipe that pads every example to max_length would spend on padding instead.
        "padding_pct_if_padded_to_max_length": round(100 * (1 - tokens / max(len(lengths) * max_length, 1)), 2),
    }


def save_dataset(dataset: Dataset, out_dir: Path) -> None:
    dataset.save_to_disk(str(out_dir))
