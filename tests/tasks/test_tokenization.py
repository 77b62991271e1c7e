"""Chat-template tokenization: loss only on the answer (every assistant turn of a conversation, or its last),
truncation counted, long conversations fitted oldest exchange first, text chunked, no padding."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from canonical import canonical
from transformers import AutoTokenizer

from tasks.data.tokenization import (
    IGNORE_INDEX,
    Tokenized,
    token_stats,
    tokenize_conversations,
    tokenize_split,
    tokenize_text,
)
from tasks.formats.registry import CONVERSATION as CONVERSATIONS
from tasks.formats.registry import PAIR


def tokenize_conversation(tokenizer, messages: list[dict[str, str]], system_prompt: str | None, max_length: int,
                          train_on: str, examples: list[tuple[str, str]] | None = None) -> Tokenized | None:
    return tokenize_conversations(tokenizer, [messages], system_prompt, max_length, train_on,
                                  [examples or []])[0]


def tokenize_instruction(tokenizer, prompt: str, response: str, system_prompt: str | None,
                         max_length: int) -> Tokenized:
    """An instruction example, as validate writes it: a one-exchange conversation."""
    piece = tokenize_conversation(tokenizer, [{"role": "user", "content": prompt},
                                              {"role": "assistant", "content": response}],
                                  system_prompt, max_length, "last_turn")
    assert piece is not None
    return piece


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_only_the_answer_is_labelled(tokenizer) -> None:
    piece = tokenize_instruction(tokenizer, "What does `len(obj)` do?", "Return the number of items.", None, 256)
    labelled = [t for t in piece.labels if t != IGNORE_INDEX]
    assert tokenizer.decode(labelled) == "Return the number of items.<|im_end|>\n"
    prompt_text = tokenizer.decode(piece.input_ids[: piece.prompt_length])
    assert prompt_text.endswith("What does `len(obj)` do?<|im_end|>\n<|im_start|>assistant\n")
    assert all(label == IGNORE_INDEX for label in piece.labels[: piece.prompt_length])
    assert not piece.truncated


def test_system_prompt_replaces_the_template_default(tokenizer) -> None:
    piece = tokenize_instruction(tokenizer, "Hi?", "Hello.", "Answer in one line.", 256)
    text = tokenizer.decode(piece.input_ids)
    assert text.startswith("<|im_start|>system\nAnswer in one line.<|im_end|>") and "helpful assistant" not in text


def test_truncation_is_counted(tokenizer) -> None:
    frame = pd.DataFrame({"prompt": ["Short?", "Long?"], "response": ["Yes.", "word " * 200]})
    dataset = tokenize_split.fn(tokenizer, canonical(frame), CONVERSATIONS, None, 64)
    assert [len(ids) for ids in dataset["input_ids"]][1] == 64
    assert dataset["truncated"] == [False, True]
    stats = token_stats(dataset, 64)
    assert stats["examples"] == 2 and stats["truncated_pct"] == 50.0 and stats["padding_pct"] == 0.0
    assert stats["tokens"] == sum(len(ids) for ids in dataset["input_ids"])


def test_plain_text_is_chunked_not_truncated(tokenizer) -> None:
    pieces = tokenize_text(tokenizer, "alpha beta gamma " * 100, 32)
    assert len(pieces) > 2 and all(len(p.input_ids) <= 32 for p in pieces)
    assert sum(len(p.input_ids) for p in pieces) == len(tokenizer("alpha beta gamma " * 100)["input_ids"]) + 1
    assert all(p.labels == p.input_ids and not p.truncated for p in pieces)


CONVERSATION = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What does `len(obj)` do?"},
                {"role": "assistant", "content": "Return the number of items."},
                {"role": "user", "content": "Which module is it in?"},
                {"role": "assistant", "content": "It is in the `builtins` module."}]


def labelled_spans(tokenizer, piece) -> list[str]:
    """The decoded runs of labelled tokens."""
    spans, run = [], []
    for token, label in zip(piece.input_ids, piece.labels):
        if label != IGNORE_INDEX:
            assert label == token
            run.append(token)
        elif run:
            spans.append(tokenizer.decode(run))
            run = []
    return spans + ([tokenizer.decode(run)] if run else [])


@pytest.mark.parametrize("train_on", ["all_turns", "last_turn"])
def test_a_conversation_is_labelled_on_its_assistant_turns(tokenizer, train_on: str) -> None:
    piece = tokenize_conversation(tokenizer, CONVERSATION, "Ignored: the conversation has its own.", 256, train_on)
    answers = ["Return the number of items.<|im_end|>\n", "It is in the `builtins` module.<|im_end|>\n"]
    assert labelled_spans(tokenizer, piece) == (answers if train_on == "all_turns" else answers[1:])
    text = tokenizer.decode(piece.input_ids)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>") and "Ignored" not in text
    # Generation starts at the last answer: everything before it is the history.
    assert tokenizer.decode(piece.input_ids[:piece.prompt_length]).endswith(
        "Which module is it in?<|im_end|>\n<|im_start|>assistant\n")
    assert not piece.truncated


def test_a_long_conversation_loses_its_oldest_exchange_first_and_keeps_its_system_message(tokenizer) -> None:
    whole = tokenize_conversation(tokenizer, CONVERSATION, None, 256, "all_turns")
    fitted = tokenize_conversation(tokenizer, CONVERSATION, None, len(whole.input_ids) - 1, "all_turns")
    text = tokenizer.decode(fitted.input_ids)
    assert fitted.truncated and "Be brief." in text and "len(obj)" not in text and "Which module" in text
    assert labelled_spans(tokenizer, fitted) == ["It is in the `builtins` module.<|im_end|>\n"]
    assert tokenize_conversation(tokenizer, CONVERSATION, None, 12, "all_turns") is None  # nothing left to learn


def test_in_context_examples_go_between_the_system_message_and_the_conversation(tokenizer) -> None:
    piece = tokenize_conversation(tokenizer, CONVERSATION[1:], "Be brief.", 1 << 20, "last_turn",
                                  [("What does `abs(x)` do?", "Return the absolute value.")])
    text = tokenizer.decode(piece.input_ids)
    assert text.index("Be brief.") < text.index("abs(x)") < text.index("len(obj)")
    assert labelled_spans(tokenizer, piece) == ["It is in the `builtins` module.<|im_end|>\n"]


def test_held_out_conversations_keep_what_the_user_asked_and_the_last_answer(tokenizer) -> None:
    frame = pd.DataFrame({"messages": [json.dumps(CONVERSATION)]})
    dataset = tokenize_split.fn(tokenizer, frame, CONVERSATIONS, None, 256)
    assert dataset["prompt"] == ["What does `len(obj)` do? / Which module is it in?"]
    assert dataset["response"] == ["It is in the `builtins` module."]


def test_a_preference_pair_is_its_chosen_example_and_the_rejected_answer_after_the_same_prompt(tokenizer) -> None:
    frame = pd.DataFrame({"prompt": ["What does `len(obj)` do?", "Long? " * 80],
                          "chosen": ["Return the number of items.", "Yes."],
                          "rejected": ["Return the absolute value.", "No."]})
    dataset = tokenize_split.fn(tokenizer, canonical(frame, "preference"), PAIR, None, 64)
    assert len(dataset) == 1  # the second prompt leaves no room for an answer within 64 tokens
    row = dataset[0]
    chosen = tokenize_instruction(tokenizer, frame.prompt[0], frame.chosen[0], None, 64)
    assert (row["input_ids"], row["labels"], row["prompt_length"]) == (chosen.input_ids, chosen.labels,
                                                                       chosen.prompt_length)
    assert tokenizer.decode(row["rejected_ids"]) == "Return the absolute value.<|im_end|>\n"
    assert (row["prompt"], row["response"]) == (frame.prompt[0], frame.chosen[0])
    stats = token_stats(dataset, 64)
    assert stats["rejected_answer_tokens"] == len(row["rejected_ids"])
