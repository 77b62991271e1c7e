"""Evaluation: batched scoring agrees with plain one-example-at-a-time transformers code."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tasks.evaluation import generate_answers, reference_nll, rouge_l, score_model
from tasks.tokenization import tokenize_split

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"


@pytest.fixture(scope="module")
def setup(tiny_model_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    frame = pd.read_json(DEMO / "eval.jsonl", lines=True).head(7)
    return model, tokenizer, tokenize_split.fn(tokenizer, frame, "instruction", None, 128)


def test_batched_nll_matches_a_plain_loop(setup) -> None:
    model, tokenizer, dataset = setup
    nll, counts = reference_nll(model, dataset, batch_size=3, pad_id=tokenizer.pad_token_id)
    for i, row in enumerate(dataset):
        with torch.no_grad():
            out = model(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]]))
        expected_count = sum(1 for label in row["labels"][1:] if label != -100)
        assert counts[i] == expected_count
        assert math.isclose(nll[i] / counts[i], float(out.loss), rel_tol=1e-4)


def test_batched_generation_matches_one_by_one(setup) -> None:
    model, tokenizer, dataset = setup
    answers, generated, seconds = generate_answers(model, tokenizer, dataset, batch_size=4, max_new_tokens=12)
    assert generated > 0 and seconds > 0
    for i, row in enumerate(dataset):
        prompt = torch.tensor([row["input_ids"][: row["prompt_length"]]])
        with torch.no_grad():
            alone = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12,
                                   do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert answers[i] == tokenizer.decode(alone[0, prompt.shape[1]:], skip_special_tokens=True).strip()


def test_rouge_l_from_the_library() -> None:
    assert rouge_l(["Return the number of items."], ["Return the number of items."]) == [1.0]
    assert rouge_l(["completely different words"], ["Return the number of items."]) == [0.0]
    partial = rouge_l(["Return the items."], ["Return the number of items."])[0]
    assert 0.5 < partial < 1.0


def test_summary_reports_token_weighted_perplexity(setup) -> None:
    model, tokenizer, dataset = setup
    scores = score_model.fn(model, tokenizer, dataset, 4, 8, generate=True)
    summary = scores.summary()
    assert summary["examples"] == len(dataset)
    assert math.isclose(summary["perplexity"], math.exp(sum(scores.nll) / sum(scores.target_tokens)), rel_tol=1e-4)
    assert 0.0 <= summary["rouge_l"] <= 1.0
