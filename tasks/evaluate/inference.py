"""Inference on the held-out examples: loss on the references, batched greedy generation, and the scores file.

No metric is computed here (tasks/evaluate/scoring.py does that), so editing a metric never re-runs the baselines'
generation, which depends on this module only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from datasets import Dataset
from prefect import task
from prefect.cache_policies import NO_CACHE
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from tasks.core.params import TOOL_CALLING, Params
from tasks.data.tables import read_table
from tasks.data.tokenization import IGNORE_INDEX, answered, tokenize_split
from tasks.evaluate.score_files import Scores
from tasks.formats.hermes import declared_tools, first_answer
from tasks.formats.registry import CONVERSATION, TEXT, Shape
from tasks.model.loading import padding_id

# The file validate writes each held-out split to: test is data.eval, dev is carved from train (data.dev_pct).
HELD_OUT_FILES = {"test": "eval.parquet", "dev": "dev.parquet"}


def held_out(validated: Path, params: Params) -> tuple[pd.DataFrame, str]:
    """The examples every approach is scored on (the same in every evaluation stage), and how they were drawn:
    the whole validated split that evaluate.split names (test, or dev while choosing; for tool calling, each
    conversation up to its first answer) when it has at most evaluate.max_examples rows; otherwise a sample seeded by
    params' seed, never the first rows (a file sorted by label or by source would be scored on one part of it),
    stratified by label for a classification task so that each label keeps its share, at least one row each."""
    split = params.evaluate.split
    rows = pd.read_parquet(validated / HELD_OUT_FILES[split])
    if params.evaluate.task == TOOL_CALLING:  # scored on the turn that decides whether and how to call a tool
        rows["messages"] = rows["messages"].map(
            lambda messages: json.dumps(first_answer(json.loads(messages)), ensure_ascii=False))
    wanted = params.evaluate.max_examples
    if len(rows) <= wanted:
        return rows, f"all {len(rows)} rows of the {split} split"
    labels = (rows["messages"].map(lambda messages: answered(json.loads(messages)))
              if params.evaluate.task == "classification" and params.data.shape == CONVERSATION else None)
    if labels is None:
        return rows.sample(n=wanted, random_state=params.seed).sort_index(), \
            f"a sample of {wanted} of the {split} split's {len(rows)} rows (seed {params.seed})"
    quotas = label_quotas(labels.value_counts().sort_index(), wanted)
    sample = pd.concat(rows[labels == label].sample(n=quota, random_state=params.seed)
                       for label, quota in quotas.items() if quota)
    return sample.sort_index(), (f"a sample of {wanted} of the {split} split's {len(rows)} rows (seed {params.seed}), "
                                 f"stratified by label")


def label_quotas(counts: pd.Series, wanted: int) -> dict[str, int]:
    """Rows to draw per label: proportional to its count (largest remainders), and one at least for every label
    while wanted allows, taken from the label with the most."""
    shares = counts * wanted / counts.sum()
    quotas = shares.astype(int)
    for label in (shares - quotas).sort_values(ascending=False, kind="stable").index[:wanted - quotas.sum()]:
        quotas[label] += 1
    for label in quotas.index[quotas == 0][:max(wanted - len(counts), 0) + 1]:
        if quotas.max() > 1:
            quotas[quotas.idxmax()] -= 1
            quotas[label] += 1
    return {str(label): int(quota) for label, quota in quotas.items()}


def example_records(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, shape: Shape,
                    conversations: pd.Series | None = None) -> list[dict[str, Any]]:
    """One record per scored example: the question and reference answer (and the tools the conversation offered,
    when it offered some: `conversations`, the scored rows' canonical messages), or the plain-text chunk itself (a
    long document is scored as several max_length chunks, each its own example)."""
    if shape == TEXT:
        return [{"text": tokenizer.decode(ids[length:], skip_special_tokens=True)}
                for ids, length in zip(dataset["input_ids"], dataset["prompt_length"])]
    records: list[dict[str, Any]] = [{"prompt": p, "response": r}
                                     for p, r in zip(dataset["prompt"], dataset["response"])]
    for record, messages in zip(records, conversations if conversations is not None else []):
        if tools := declared_tools(json.loads(messages)):
            record["tools"] = tools
    return records


def batches(indices: list[int], size: int) -> list[list[int]]:
    return [indices[i:i + size] for i in range(0, len(indices), size)]


def longest_first(lengths: list[int]) -> list[int]:
    """Example indices, longest first, so each batch pads to similar lengths."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


@torch.no_grad()
def reference_nll(model: PreTrainedModel, dataset: Dataset, batch_size: int, pad_id: int) -> tuple[list[float], list[int]]:
    """Summed negative log-likelihood of each example's labelled tokens, teacher-forced, right-padded batches."""
    model.eval()
    device = next(model.parameters()).device
    nll, counts = [0.0] * len(dataset), [0] * len(dataset)
    for batch in batches(longest_first([len(ids) for ids in dataset["input_ids"]]), batch_size):
        rows = dataset.select(batch)
        width = max(len(ids) for ids in rows["input_ids"])
        input_ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids in rows["input_ids"]], device=device)
        labels = torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for lab in rows["labels"]], device=device)
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in rows["input_ids"]], device=device)
        logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
        targets = labels[:, 1:]
        losses = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
        for row, index in enumerate(batch):
            nll[index] = float(losses[row].sum())
            counts[index] = int((targets[row] != IGNORE_INDEX).sum())
    return nll, counts


def general_text_set(tokenizer: PreTrainedTokenizerBase, text_file: Path, max_chunks: int, max_length: int) -> Dataset:
    """The general-domain text forgetting is measured on: its first max_chunks chunks of max_length tokens."""
    chunks = tokenize_split(tokenizer, read_table(text_file).head(max_chunks), TEXT, None, max_length)
    return chunks.select(range(min(max_chunks, len(chunks))))


def general_perplexity(model: PreTrainedModel, dataset: Dataset, pad_id: int, batch_size: int) -> float:
    """Token-weighted perplexity on general-domain text (the forgetting measure)."""
    nll, tokens = reference_nll(model, dataset, batch_size, pad_id)
    return math.exp(sum(nll) / max(sum(tokens), 1))


@torch.no_grad()
def generate_answers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dataset: Dataset,
                     batch_size: int, max_new_tokens: int) -> tuple[list[str], list[bool], int]:
    """Greedy answers to each example's prompt, batched with left padding and the KV cache, whether each ended
    (wrote the end-of-turn token, after which generate pads the row) within max_new_tokens, and the tokens
    generated. A progress bar shows examples answered and their rate: generating takes minutes on a CPU."""
    model.eval()
    device = next(model.parameters()).device
    pad_id = padding_id(tokenizer)
    answers, ended = [""] * len(dataset), [False] * len(dataset)
    generated = 0
    progress = tqdm(total=len(dataset), desc="generating answers", unit="example")
    for batch in batches(longest_first(dataset["prompt_length"]), batch_size):
        prompts = [ids[:length] for ids, length in zip(dataset.select(batch)["input_ids"],
                                                       dataset.select(batch)["prompt_length"])]
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        output = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                do_sample=False, pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id)
        new_tokens = output[:, width:]
        generated += int((new_tokens != pad_id).sum())
        for row, index in enumerate(batch):
            answers[index] = tokenizer.decode(new_tokens[row], skip_special_tokens=True).strip()
            ended[index] = bool(((new_tokens[row] == tokenizer.eos_token_id) | (new_tokens[row] == pad_id)).any())
        progress.update(len(batch))
    progress.close()
    return answers, ended, generated


def rejected_answers(dataset: Dataset) -> Dataset:
    """Preference pairs with the rejected answer in place of the chosen one, after the same prompt."""
    def swap(row: dict[str, Any]) -> dict[str, Any]:
        prompt = row["input_ids"][:row["prompt_length"]]
        return {"input_ids": prompt + row["rejected_ids"],
                "labels": [IGNORE_INDEX] * len(prompt) + row["rejected_ids"]}

    return dataset.map(swap, keep_in_memory=True)


@task(cache_policy=NO_CACHE)
def score_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dataset: Dataset, batch_size: int,
                max_new_tokens: int, generate: bool) -> Scores:
    """Log-likelihood of every example's reference tokens (and of a preference pair's rejected answer) and, when
    `generate`, greedy answers to its prompt."""
    pad_id = padding_id(tokenizer)
    scores = Scores()
    scores.nll, scores.target_tokens = reference_nll(model, dataset, batch_size, pad_id)
    if "rejected_ids" in dataset.column_names:
        scores.rejected_nll, scores.rejected_tokens = reference_nll(model, rejected_answers(dataset), batch_size,
                                                                    pad_id)
    scores.prompt_tokens = list(dataset["prompt_length"])
    if generate:
        scores.predictions, scores.ended, scores.generated_tokens = generate_answers(
            model, tokenizer, dataset, batch_size, max_new_tokens)
    return scores


def attach_candidate(model: PreTrainedModel, candidate_dir: Path) -> Any:
    """The fine-tuned model: LoRA merged into the loaded base in place (no second copy), or full weights."""
    if (candidate_dir / "adapter_config.json").is_file():
        # Merged weights give the same outputs as the adapter and generate at the base model's speed. peft is
        # imported here: it costs seconds of start-up, and the baselines stage never loads an adapter.
        from peft import PeftModel

        return PeftModel.from_pretrained(model, candidate_dir).merge_and_unload()
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    del model  # full fine-tuning: the candidate replaces the base instead of sitting beside it
    return AutoModelForCausalLM.from_pretrained(candidate_dir, dtype=dtype, use_safetensors=True).to(device)


def score_adapter(model: PreTrainedModel, adapter_dir: Path, tokenizer: PreTrainedTokenizerBase, dataset: Dataset,
                  batch_size: int, max_new_tokens: int, generate: bool) -> tuple[Scores, PreTrainedModel]:
    """Score a LoRA adapter on the loaded base, unmerged, then take it off again: its scores, and the base model as
    it was (so that the candidate can be merged into it next)."""
    from peft import PeftModel

    attached = PeftModel.from_pretrained(model, adapter_dir)
    scores = score_model(attached, tokenizer, dataset, batch_size, max_new_tokens, generate)
    return scores, attached.unload()
