"""Evaluation: loss and perplexity on reference answers, and task metrics over batched greedy generations."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sacrebleu
import torch
import torch.nn.functional as F
from datasets import Dataset
from peft import PeftModel
from prefect import task
from prefect.cache_policies import NO_CACHE
from rouge_score.rouge_scorer import RougeScorer
from sklearn.metrics import f1_score
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from tasks.params import TASK_METRICS
from tasks.tokenization import IGNORE_INDEX


@dataclass
class Scores:
    """Per-example results of one model on the eval examples, and their summary."""

    nll: list[float] = field(default_factory=list)  # summed over each example's reference tokens
    target_tokens: list[int] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)
    predictions: list[str] = field(default_factory=list)
    generated_tokens: int = 0
    generation_seconds: float = 0.0

    def cost(self) -> dict[str, float]:
        """What the approach costs at inference time."""
        result = {"prompt_tokens_per_example": round(float(np.mean(self.prompt_tokens)), 1)}
        if self.predictions:
            result["generated_tokens_per_second"] = round(self.generated_tokens / max(self.generation_seconds, 1e-9), 2)
        return result


def normalize_label(text: str) -> str:
    return " ".join(text.lower().strip().strip(".!").split())


class TaskMetrics:
    """The metrics of one task type, computable on any resample of the examples (for the bootstrap)."""

    def __init__(self, task: str, scores: dict[str, Scores], references: list[str]) -> None:
        self.names = TASK_METRICS[task]
        self.scores = scores
        self.references = references
        self.nll = {a: np.asarray(s.nll) for a, s in scores.items()}
        self.tokens = {a: np.asarray(s.target_tokens) for a, s in scores.items()}
        # Per-example metrics are computed once; the bootstrap only averages them over resamples.
        self.per_example: dict[tuple[str, str], np.ndarray] = {}
        for approach, s in scores.items():
            if "rouge_l" in self.names:
                self.per_example[approach, "rouge_l"] = np.asarray(rouge_l(s.predictions, references))
            if "exact_match" in self.names:
                self.per_example[approach, "exact_match"] = np.asarray(
                    [p.strip() == r.strip() for p, r in zip(s.predictions, references)], dtype=float)
                self.per_example[approach, "accuracy"] = np.asarray(
                    [normalize_label(p) == normalize_label(r) for p, r in zip(s.predictions, references)], dtype=float)

    def value(self, name: str, approach: str, index: np.ndarray) -> float:
        if name in ("loss", "perplexity"):
            loss = float(self.nll[approach][index].sum() / max(self.tokens[approach][index].sum(), 1))
            return loss if name == "loss" else math.exp(loss)
        if (approach, name) in self.per_example:
            return float(self.per_example[approach, name][index].mean())
        predictions = [self.scores[approach].predictions[i] for i in index]
        references = [self.references[i] for i in index]
        if name == "chrf":
            return float(sacrebleu.corpus_chrf(predictions, [references]).score)
        if name == "bleu":
            return float(sacrebleu.corpus_bleu(predictions, [references]).score)
        assert name == "macro_f1"
        return float(f1_score([normalize_label(r) for r in references], [normalize_label(p) for p in predictions],
                              average="macro", zero_division=0))

    def per_example_score(self, approach: str, name: str) -> np.ndarray | None:
        """Each example's score on `name`, higher is better; None for corpus-level metrics (BLEU, macro-F1)."""
        if name in ("loss", "perplexity"):
            return -self.nll[approach] / np.maximum(self.tokens[approach], 1)  # mean log-likelihood per token
        return self.per_example.get((approach, name))

    def functions(self) -> dict[str, Callable[[str, np.ndarray], float]]:
        return {name: (lambda a, i, name=name: self.value(name, a, i)) for name in self.names}


def padding_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's pad token, or its end-of-sequence token when it has none (many chat models)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


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


@torch.no_grad()
def generate_answers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dataset: Dataset,
                     batch_size: int, max_new_tokens: int) -> tuple[list[str], int, float]:
    """Greedy answers to each example's prompt, batched with left padding and the KV cache."""
    model.eval()
    device = next(model.parameters()).device
    pad_id = padding_id(tokenizer)
    answers = [""] * len(dataset)
    generated, started = 0, time.perf_counter()
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
    return answers, generated, time.perf_counter() - started


def rouge_l(predictions: list[str], references: list[str]) -> list[float]:
    """ROUGE-L F1 per example (Google's rouge-score, stemmed)."""
    scorer = RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]


@task(cache_policy=NO_CACHE)
def score_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dataset: Dataset, batch_size: int,
                max_new_tokens: int, generate: bool) -> Scores:
    """Loss/perplexity on the references and, for instruction data, ROUGE-L of greedy answers."""
    pad_id = padding_id(tokenizer)
    scores = Scores()
    scores.nll, scores.target_tokens = reference_nll(model, dataset, batch_size, pad_id)
    scores.prompt_tokens = list(dataset["prompt_length"])
    if generate:
        scores.predictions, scores.generated_tokens, scores.generation_seconds = generate_answers(
            model, tokenizer, dataset, batch_size, max_new_tokens)
    return scores


def attach_candidate(model: PreTrainedModel, candidate_dir: Path) -> PreTrainedModel:
    """The fine-tuned model: LoRA merged into the loaded base in place (no second copy), or full weights."""
    if (candidate_dir / "adapter_config.json").is_file():
        # Merged weights give the same outputs as the adapter and generate at the base model's speed.
        return PeftModel.from_pretrained(model, candidate_dir).merge_and_unload()
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    del model  # full fine-tuning: the candidate replaces the base instead of sitting beside it
    return AutoModelForCausalLM.from_pretrained(candidate_dir, dtype=dtype, use_safetensors=True).to(device)
