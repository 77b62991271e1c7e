"""Inference: batched scoring agrees with plain one-example-at-a-time transformers code; the scores file."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from canonical import canonical
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from tasks.core.params import load_params
from tasks.data.tokenization import tokenize_split
from tasks.evaluate.inference import (
    example_records,
    generate_answers,
    held_out,
    label_quotas,
    reference_nll,
    score_adapter,
)
from tasks.formats.registry import TEXT

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"


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
    answers, ended, generated = generate_answers(model, tokenizer, dataset, batch_size=4, max_new_tokens=12)
    assert generated > 0
    for i, row in enumerate(dataset):
        prompt = torch.tensor([row["input_ids"][: row["prompt_length"]]])
        with torch.no_grad():
            alone = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12,
                                   do_sample=False, pad_token_id=tokenizer.pad_token_id)
        new_tokens = alone[0, prompt.shape[1]:].tolist()
        assert answers[i] == tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
        assert ended[i] == (tokenizer.eos_token_id in new_tokens)  # a runaway answer is one that never ended


def test_perplexity_on_a_file_agrees_with_an_independent_loop(tiny_model_dir: Path) -> None:
    """Cross-check: the pipeline's batched perplexity vs a plain transformers loop written here."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    text_file = Path(__file__).resolve().parents[2] / "data" / "general" / "reference.jsonl"
    texts = pd.read_json(text_file, lines=True)["text"].head(12)
    dataset = tokenize_split.fn(tokenizer, pd.DataFrame({"text": texts}), TEXT, None, 96)
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


def test_plain_text_with_passages_in_context_is_scored_on_the_same_tokens(tiny_model_dir: Path) -> None:
    """The in-context baselines of plain text put passages before each chunk; the scored tokens stay the same as
    without them, so every approach's perplexity is over the same tokens and the examples pair up."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text_file = Path(__file__).resolve().parents[2] / "data" / "general" / "reference.jsonl"
    frame = pd.read_json(text_file, lines=True).head(4)
    plain = tokenize_split.fn(tokenizer, frame, TEXT, None, 64)
    passages = [["A passage shown first.", "And a second one."]] * len(frame)
    with_context = tokenize_split.fn(tokenizer, frame, TEXT, None, 64, passages)
    assert len(plain) == len(with_context) > len(frame)  # long paragraphs are several chunks
    for bare, shown in zip(plain, with_context):
        context = shown["prompt_length"]
        assert context > 0 and shown["input_ids"][context:] == bare["input_ids"]
        scored = [t for t in shown["labels"] if t != -100]
        assert scored == bare["input_ids"][1:]  # the first token has nothing before it without context
    assert example_records(plain, tokenizer, TEXT) == example_records(with_context, tokenizer, TEXT)



def test_an_eval_file_sorted_by_label_is_sampled_across_every_label(tmp_path: Path) -> None:
    """max_examples never means "the first rows": 200 rows sorted by label (120, 60, 20), 20 scored."""
    labels = ["billing"] * 120 + ["outage"] * 60 + ["refund"] * 20
    eval_file = tmp_path / "eval.parquet"
    frame = pd.DataFrame({"prompt": [f"ticket {i}" for i in range(200)], "response": labels})
    canonical(frame).to_parquet(eval_file)
    shipped = load_params()

    def evaluated(**settings: object) -> tuple[pd.DataFrame, str]:
        params = shipped.model_copy(update={"evaluate": shipped.evaluate.model_copy(update=settings)})
        return held_out(tmp_path, params)

    rows, drawn = evaluated(max_examples=20, task="classification")
    assert frame["response"][rows.index].value_counts().to_dict() == {"billing": 12, "outage": 6, "refund": 2}
    assert drawn == "a sample of 20 of the test split's 200 rows (seed 42), stratified by label"
    again, _ = evaluated(max_examples=20, task="classification")
    assert again.equals(rows) and list(rows.index) == sorted(rows.index)  # seeded, in file order
    rows, drawn = evaluated(max_examples=20, task="free_text")
    assert len(rows) == 20 and rows.index.max() >= 120 and "stratified" not in drawn
    assert evaluated(max_examples=500)[1] == "all 200 rows of the test split"


def test_label_quotas_are_proportional_and_keep_every_label() -> None:
    assert label_quotas(pd.Series({"a": 50, "b": 30, "c": 20}), 10) == {"a": 5, "b": 3, "c": 2}
    assert label_quotas(pd.Series({"a": 997, "b": 2, "c": 1}), 10) == {"a": 8, "b": 1, "c": 1}
    assert sum(label_quotas(pd.Series({"a": 3, "b": 3, "c": 3}), 2).values()) == 2


def test_an_adapter_scored_beside_the_base_leaves_the_base_as_it_was(setup, tmp_path: Path) -> None:
    """The adapter finetune.init_adapter names is scored unmerged and taken off again: the candidate is merged into
    the same base next, which must not carry the first adapter."""
    model, tokenizer, dataset = setup
    before, _ = reference_nll(model, dataset, batch_size=4, pad_id=tokenizer.pad_token_id)
    adapter = get_peft_model(AutoModelForCausalLM.from_pretrained(model.name_or_path),
                             LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    adapter.save_pretrained(tmp_path / "adapter")
    scores, base = score_adapter(model, tmp_path / "adapter", tokenizer, dataset, 4, 4, generate=False)
    after, _ = reference_nll(base, dataset, batch_size=4, pad_id=tokenizer.pad_token_id)
    assert after == pytest.approx(before, rel=1e-5) and scores.nll != pytest.approx(before, rel=1e-3)
    assert not any("lora" in name for name, _ in base.named_modules())
