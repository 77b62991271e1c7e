"""Evaluation: batched scoring agrees with plain one-example-at-a-time transformers code."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score
from transformers import AutoModelForCausalLM, AutoTokenizer

from tasks.evaluation import Scores, TaskMetrics, generate_answers, reference_nll, rouge_l, score_model
from tasks.tokenization import tokenize_split

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"


@pytest.fixture(scope="module")
def setup(tiny_model_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    frame = pd.read_json(DEMO / "eval.jsonl", lines=True).head(7)
    return model, tokenizer, tokenize_split.fn(tokenizer, frame, "instruction", None, 512)


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


def test_task_metrics_and_cost(setup) -> None:
    model, tokenizer, dataset = setup
    scores = score_model.fn(model, tokenizer, dataset, 4, 8, generate=True)
    metrics = TaskMetrics("free_text", {"m": scores}, list(dataset["response"]))
    everything = np.arange(len(dataset))
    assert math.isclose(metrics.value("perplexity", "m", everything),
                        math.exp(sum(scores.nll) / sum(scores.target_tokens)), rel_tol=1e-9)
    assert 0.0 <= metrics.value("rouge_l", "m", everything) <= 1.0
    per_token = metrics.per_example_score("m", "perplexity")  # higher is better: mean log-likelihood per token
    assert per_token.shape == (len(dataset),) and (per_token < 0).all()
    assert metrics.per_example_score("m", "rouge_l").tolist() == rouge_l(scores.predictions, list(dataset["response"]))
    assert scores.cost()["prompt_tokens_per_example"] == pytest.approx(np.mean(dataset["prompt_length"]), abs=0.05)


def test_label_and_translation_metrics_come_from_libraries() -> None:
    refs = ["positive", "negative", "positive", "neutral"]
    preds = ["Positive.", "negative", "negative", "neutral"]
    scores = {"m": Scores(nll=[1.0] * 4, target_tokens=[1] * 4, prompt_tokens=[3] * 4, predictions=preds)}
    labels = TaskMetrics("classification", scores, refs)
    everything = np.arange(4)
    assert labels.value("exact_match", "m", everything) == 0.5  # "Positive." is not an exact match
    assert labels.value("accuracy", "m", everything) == 0.75  # but it is the right label
    assert labels.value("macro_f1", "m", everything) == pytest.approx(
        f1_score(["positive", "negative", "positive", "neutral"], ["positive", "negative", "negative", "neutral"],
                 average="macro"))
    translation = TaskMetrics("translation", {"m": Scores(nll=[1.0], target_tokens=[1], prompt_tokens=[1],
                                                          predictions=["the cat sat on the mat"])},
                              ["the cat sat on the mat"])
    assert translation.value("chrf", "m", np.arange(1)) == pytest.approx(100.0)
    assert translation.value("bleu", "m", np.arange(1)) == pytest.approx(100.0)


def test_perplexity_on_a_file_agrees_with_an_independent_loop(tiny_model_dir: Path) -> None:
    """Cross-check: the pipeline's batched perplexity vs a plain transformers loop written here."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    text_file = Path(__file__).resolve().parents[2] / "data" / "general" / "reference.jsonl"
    texts = pd.read_json(text_file, lines=True)["text"].head(12)
    dataset = tokenize_split.fn(tokenizer, pd.DataFrame({"text": texts}), "text", None, 96)
    nll, tokens = reference_nll(model, dataset, batch_size=5, pad_id=tokenizer.pad_token_id)
    ours = math.exp(sum(nll) / sum(tokens))
    total, count = 0.0, 0
    for text in texts:
        ids = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
        for start in range(0, len(ids), 96):
            chunk = torch.tensor([ids[start:start + 96]])
            if chunk.shape[1] < 2:
                continue
            with torch.no_grad():
                loss = model(input_ids=chunk, labels=chunk).loss.item()
            total += loss * (chunk.shape[1] - 1)
            count += chunk.shape[1] - 1
    assert ours == pytest.approx(math.exp(total / count), rel=0.005)
