"""Tokenization: the base model's chat template, loss on response tokens only (assistant turns of a
conversation; all tokens of plain text), no padding. A preference pair is its prompt and chosen answer (as an
instruction example) plus the tokens of its rejected answer after the same prompt.

A split on disk is tokenized by `datasets` in batches, in one process per core, each writing Arrow as it goes
(`tokenize_file`), so memory holds a batch per process however large the split; the in-context baselines tokenize
their few held-out rows in memory (`tokenize_split`). Both go through `tokenize_rows`, so they agree token for token.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.compute as pc
from datasets import Dataset, DatasetInfo, Features, List, Value
from prefect import task
from prefect.cache_policies import NO_CACHE
from transformers import PreTrainedTokenizerBase

from tasks.errors import UserError
from tasks.sensitive import refused_rows

IGNORE_INDEX = -100  # label value the loss skips: prompt tokens are context, not targets
# What the in-context baselines show before an example: (question, answer) turns, or plain-text passages.
Context = Sequence[tuple[str, str]] | Sequence[str]
# The tokenized datasets' columns and types (input_ids as int32, as `datasets` stores a column of that name).
FEATURES = Features({"input_ids": List(Value("int32")), "labels": List(Value("int64")),
                     "prompt_length": Value("int64"), "truncated": Value("bool"),
                     "prompt": Value("string"), "response": Value("string")})
# Preference pairs: the chosen answer is the example's response; the rejected answer's tokens follow the same prompt.
PREFERENCE_FEATURES = Features({**FEATURES, "rejected_ids": List(Value("int32"))})
BATCH_ROWS = 1000  # rows per map batch: the template rendering dominates, so larger batches gain nothing
ROWS_PER_PROCESS = 20_000  # below this many rows per core, starting more processes costs more than it saves


def features_for(data_format: str) -> Features:
    return PREFERENCE_FEATURES if data_format == "preference" else FEATURES


@dataclass(frozen=True)
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    prompt_length: int  # tokens before the response; generation starts here
    truncated: bool


def example_turns(examples: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """(question, answer) examples as user and assistant turns."""
    return [{"role": role, "content": text} for question, answer in examples
            for role, text in (("user", question), ("assistant", answer))]


def tokenize_instructions(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], responses: Sequence[str],
                          system_prompt: str | None, max_length: int,
                          examples: Sequence[Sequence[tuple[str, str]]] | None = None) -> list[Tokenized]:
    """Format examples with the chat template, `examples[i]` (few-shot turns) before row i; only the assistant's
    answer carries labels. Each template call renders the whole batch and tokenizes it in one call."""
    conversations = [with_examples([{"role": "user", "content": prompt}], system_prompt,
                                   examples[i] if examples is not None else ()) for i, prompt in enumerate(prompts)]
    prompt_ids = tokenizer.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
    full_ids = tokenizer.apply_chat_template(
        [messages + [{"role": "assistant", "content": response}] for messages, response in zip(conversations, responses)],
        tokenize=True, return_dict=True)["input_ids"]
    pieces = []
    for prompt, full in zip(prompt_ids, full_ids):
        if full[: len(prompt)] != prompt:
            raise UserError("the base model's chat template renders the prompt differently once an answer follows; "
                            "response-only loss needs a template where the prompt is a prefix (e.g. ChatML)")
        labels = [IGNORE_INDEX] * len(prompt) + full[len(prompt):]
        pieces.append(Tokenized(full[:max_length], labels[:max_length], min(len(prompt), max_length),
                                len(full) > max_length))
    return pieces


def tokenize_instruction(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str,
                         system_prompt: str | None, max_length: int,
                         examples: Sequence[tuple[str, str]] = ()) -> Tokenized:
    """Format one example with the chat template; only the assistant's answer carries labels."""
    return tokenize_instructions(tokenizer, [prompt], [response], system_prompt, max_length, [examples])[0]


def with_examples(messages: list[dict[str, str]], system_prompt: str | None,
                  examples: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """A conversation as the model sees it: its own system message (or system_prompt), then the example turns
    (few-shot or retrieved, for the in-context baselines), then its turns."""
    own = messages[:1] if messages[0]["role"] == "system" else []
    system = own or ([{"role": "system", "content": system_prompt}] if system_prompt else [])
    return system + example_turns(examples) + messages[len(own):]


def render(tokenizer: PreTrainedTokenizerBase, conversations: list[list[dict[str, str]]],
           generation_prompt: bool) -> list[list[int]]:
    return tokenizer.apply_chat_template(conversations, add_generation_prompt=generation_prompt, tokenize=True,
                                         return_dict=True)["input_ids"]


def fit_conversation(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], fixed: int,
                     max_length: int) -> tuple[list[dict[str, str]], bool]:
    """Drop the oldest user/assistant pairs after the first `fixed` messages (system, examples) until the
    conversation fits max_length tokens, keeping at least its last exchange; whether any was dropped."""
    dropped = False
    while len(messages) - fixed > 2 and len(render(tokenizer, [messages], False)[0]) > max_length:
        messages = messages[:fixed] + messages[fixed + 2:]
        dropped = True
    return messages, dropped


def tokenize_conversation(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]],
                          system_prompt: str | None, max_length: int, train_on: str,
                          examples: Sequence[tuple[str, str]] = ()) -> Tokenized | None:
    """A multi-turn conversation through the chat template, labels on its assistant turns (all, or only the
    last); generation starts at the last one. None when nothing is left to learn once it fits max_length."""
    full_messages = with_examples(messages, system_prompt, examples)
    fixed = len(full_messages) - len(messages) + (messages[0]["role"] == "system")
    full_messages, dropped = fit_conversation(tokenizer, full_messages, fixed, max_length)
    assistant = [i for i, m in enumerate(full_messages) if m["role"] == "assistant" and i >= fixed]
    targets = assistant if train_on == "all_turns" else assistant[-1:]
    rendered = render(tokenizer, [full_messages[:i] for i in targets], True) + \
        render(tokenizer, [full_messages[:i + 1] for i in targets] + [full_messages], False)
    prefixes, turns, full = rendered[:len(targets)], rendered[len(targets):-1], rendered[-1]
    labels = [IGNORE_INDEX] * len(full)
    for prefix, turn in zip(prefixes, turns):
        if turn[:len(prefix)] != prefix or full[:len(turn)] != turn:
            raise UserError("the base model's chat template renders a conversation differently once later turns "
                            "follow; assistant-only loss needs a template where each turn extends the one before "
                            "(e.g. ChatML): set tokenize.chat_template")
        labels[len(prefix):len(turn)] = turn[len(prefix):]
    labels = labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return Tokenized(full[:max_length], labels, min(len(prefixes[-1]), max_length), dropped or len(full) > max_length)


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
        if len(chunk) < 2:  # a lone last token (often just the eos) has nothing before it to be predicted from
            continue
        labels = [IGNORE_INDEX] * (len(prefix) + 1) + chunk[1:] if prefix else chunk
        pieces.append(Tokenized(prefix + chunk, labels, len(prefix), False))
    return pieces


def last_turn_only(frame: pd.DataFrame) -> pd.DataFrame:
    """Conversations cut to their system message (if any), last user turn and last answer."""
    def cut(messages: list[dict[str, str]]) -> list[dict[str, str]]:
        return [m for m in messages[:1] if m["role"] == "system"] + messages[-2:]

    return pd.DataFrame({"messages": [json.dumps(cut(json.loads(m)), ensure_ascii=False) for m in frame["messages"]]})


def asked(conversation: list[dict[str, str]]) -> str:
    """What a conversation's user said, turn by turn: how reports name it and what retrieval searches by."""
    return " / ".join(m["content"] for m in conversation if m["role"] == "user")


def tokenize_rows(rows: dict[str, list], tokenizer: PreTrainedTokenizerBase, data_format: str,
                  system_prompt: str | None, max_length: int,
                  contexts: Sequence[Context] | None = None, train_on: str = "last_turn") -> dict[str, list]:
    """Tokenize a batch of rows given as columns (prompt and response, text, messages, or prompt, chosen and
    rejected) into the columns of features_for(data_format); instruction rows keep their prompt and reference
    answer for evaluation, a long text gives several rows, a conversation keeps what its user asked and its last
    answer (the reference), a preference pair its prompt and chosen answer (the reference). A pair whose prompt
    leaves no room for an answer within max_length gives no row (the stage counts them).

    `contexts[i]`, when given, is what the in-context baselines show before row i: (question, answer) turns for
    instruction data and conversations, passages for plain text. `train_on` says which assistant turns of a
    conversation carry labels; the held-out ones are scored on their last.
    """
    out: dict[str, list] = {name: [] for name in features_for(data_format)}
    if data_format == "preference":
        chosen = tokenize_instructions(tokenizer, rows["prompt"], rows["chosen"], system_prompt, max_length,
                                       contexts)  # type: ignore[arg-type]
        rejected = tokenize_instructions(tokenizer, rows["prompt"], rows["rejected"], system_prompt, max_length,
                                         contexts)  # type: ignore[arg-type]
        pieces, sources = [], []
        for i, (better, worse) in enumerate(zip(chosen, rejected)):
            if better.prompt_length >= max_length:
                continue
            pieces.append(Tokenized(better.input_ids, better.labels, better.prompt_length,
                                    better.truncated or worse.truncated))
            sources.append((rows["prompt"][i], rows["chosen"][i]))
            out["rejected_ids"].append(worse.input_ids[worse.prompt_length:])
    elif data_format == "instruction":
        pieces = tokenize_instructions(tokenizer, rows["prompt"], rows["response"], system_prompt, max_length,
                                       contexts)  # type: ignore[arg-type]
        sources = list(zip(rows["prompt"], rows["response"]))
    elif data_format == "chat":  # a conversation left with nothing to learn gives no row (the stage counts them)
        pieces, sources = [], []
        for i, conversation in enumerate(map(json.loads, rows["messages"])):
            piece = tokenize_conversation(tokenizer, conversation, system_prompt, max_length, train_on,
                                          contexts[i] if contexts is not None else ())  # type: ignore[arg-type]
            if piece is not None:
                pieces.append(piece)
                sources.append((asked(conversation), conversation[-1]["content"]))
    else:
        pieces, sources = [], []
        for i, text in enumerate(rows["text"]):
            chunks = tokenize_text(tokenizer, text, max_length, contexts[i] if contexts is not None else ())
            pieces += chunks
            sources += [("", "")] * len(chunks)
    for piece, (prompt, response) in zip(pieces, sources):
        out["input_ids"].append(piece.input_ids)
        out["labels"].append(piece.labels)
        out["prompt_length"].append(piece.prompt_length)
        out["truncated"].append(piece.truncated)
        out["prompt"].append(prompt)
        out["response"].append(response)
    return out


def answerable(frame: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, data_format: str, system_prompt: str | None,
               max_length: int) -> pd.DataFrame:
    """The held-out rows that keep an answer to score once fitted into max_length, as the fine-tuned model and the
    generalist see them: a conversation or a pair can lose it (tokenize_rows gives no row for it), while the
    in-context baselines, never truncated, would still score it. Every approach is scored on these rows."""
    if data_format not in ("chat", "preference"):
        return frame  # an instruction example or a text always keeps its answer or chunks
    keep = [i for i in range(len(frame))
            if tokenize_rows({column: [frame[column].iloc[i]] for column in frame.columns}, tokenizer, data_format,
                             system_prompt, max_length)["input_ids"]]
    return frame.iloc[keep].reset_index(drop=True)


@task(cache_policy=NO_CACHE)
def tokenize_split(tokenizer: PreTrainedTokenizerBase, frame: pd.DataFrame, data_format: str,
                   system_prompt: str | None, max_length: int, contexts: Sequence[Context] | None = None) -> Dataset:
    """Tokenize a split held in memory (the held-out rows the baselines score) into an in-memory dataset."""
    rows = {column: list(frame[column]) for column in frame.columns}
    return Dataset.from_dict(tokenize_rows(rows, tokenizer, data_format, system_prompt, max_length, contexts),
                             features=features_for(data_format))


@contextmanager
def forked_processes_end_quietly() -> Iterator[None]:
    """While it lasts, a process forked from this one ends at once, silently, on SIGINT or SIGTERM, while this
    one keeps its own handling. `datasets` forks its workers and a manager process, and a fork inherits the
    stage's handler (print one line, report to Prefect, stop the children, exit): the stage must do that once."""
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set from there
        yield
        return
    parent = os.getpid()
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}

    def handle(signum: int, frame: Any) -> None:
        if os.getpid() == parent and callable(previous[signum]):
            previous[signum](signum, frame)
        elif os.getpid() != parent or previous[signum] != signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for signum in previous:
        signal.signal(signum, handle)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def processes_for(rows: int) -> int:
    """One process per core this stage may use (`taskset` limits them), but none with fewer than
    ROWS_PER_PROCESS rows to do; 1 means no worker processes at all."""
    return max(1, min(len(os.sched_getaffinity(0)), rows // ROWS_PER_PROCESS))


def fingerprint(*inputs: Any) -> str:
    """A `datasets` fingerprint derived from what the output depends on, so that the same inputs give the same
    bytes (DVC then sees an unchanged output) rather than a fingerprint of temporary files."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tokenizer_state(tokenizer: PreTrainedTokenizerBase) -> tuple[str, str | None]:
    """What a tokenizer's output depends on: its vocabulary and rules, and its chat template."""
    return (tokenizer.backend_tokenizer.to_str() if tokenizer.is_fast else tokenizer.name_or_path,
            tokenizer.chat_template)


def save_reproducibly(dataset: Dataset, tag: str, out_dir: Path) -> None:
    """Save a plain dataset over the same Arrow data, fingerprinted with `tag` (see `fingerprint`) and with no
    record of temporary files in its info, so that the same inputs give the same bytes."""
    Dataset(dataset.data, info=DatasetInfo(features=dataset.features), fingerprint=tag).save_to_disk(str(out_dir))


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@task(cache_policy=NO_CACHE)
def tokenize_file(tokenizer: PreTrainedTokenizerBase, parquet: Path, out_dir: Path, data_format: str,
                  system_prompt: str | None, max_length: int, train_on: str = "last_turn") -> dict[str, float]:
    """Tokenize a Parquet split into an Arrow dataset at out_dir, batch by batch; returns its token statistics.

    `datasets` reads the Parquet file into a memory-mapped Arrow file and `map` writes each batch's output to
    Arrow as it goes (one file per process), so memory holds a few batches, never the split; the work files
    live beside out_dir and are removed at the end.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}-", dir=out_dir.parent) as work:
        rows = Dataset.from_parquet(str(parquet), cache_dir=work, keep_in_memory=False)
        processes = processes_for(len(rows))
        tag = fingerprint(file_digest(parquet), tokenizer_state(tokenizer), data_format, system_prompt, max_length,
                          *([train_on] if data_format == "chat" else []))
        with forked_processes_end_quietly():
            tokenized = rows.map(
                tokenize_rows, batched=True, batch_size=BATCH_ROWS, num_proc=processes if processes > 1 else None,
                fn_kwargs={"tokenizer": tokenizer, "data_format": data_format, "system_prompt": system_prompt,
                           "max_length": max_length, "train_on": train_on},
                remove_columns=rows.column_names, features=features_for(data_format),
                cache_file_name=str(Path(work) / "tokens.arrow"),
                load_from_cache_file=False, new_fingerprint=tag, desc=f"tokenize {parquet.stem}")
        save_reproducibly(tokenized, tag, out_dir)
        stats = token_stats(tokenized, max_length)
        if data_format in ("chat", "preference"):  # a row per conversation or pair, none for one with no answer left
            stats["dropped"] = len(rows) - len(tokenized)
            stats["dropped_pct"] = round(100 * stats["dropped"] / max(len(rows), 1), 3)
        return stats


@task(cache_policy=NO_CACHE)
def tokenize_replay_text(tokenizer: PreTrainedTokenizerBase, jsonl: Path, out_dir: Path,
                         max_length: int) -> dict[str, float]:
    """The general-domain text that finetune.replay_pct mixes into training, as plain text is trained: chunks of
    max_length, every token a target. A few hundred paragraphs, so it is tokenized in memory."""
    try:
        frame = pd.read_json(jsonl, lines=True, dtype=False)
    except (ValueError, OSError) as exc:
        raise UserError(f"tokenize.replay_text {jsonl} cannot be read as JSON Lines ({exc}); point it at a file "
                        'with a "text" value per line, such as data/general/replay.jsonl') from None
    if "text" not in frame.columns or frame.empty:
        raise UserError(f'tokenize.replay_text {jsonl} has no rows with a "text" value; point it at a file with '
                        'one per line, such as data/general/replay.jsonl')
    refused = refused_rows(frame["text"].astype(str))
    if refused:  # trained on like the data splits, so held to what `validate` refuses in them
        raise UserError(f"tokenize.replay_text {jsonl} holds text no training data may carry ("
                        + "; ".join(refused) + "): remove those rows, or point it at other general text")
    chunks = tokenize_split.fn(tokenizer, frame[["text"]].astype(str), "text", None, max_length)
    save_reproducibly(chunks, fingerprint(file_digest(jsonl), tokenizer_state(tokenizer), max_length), out_dir)
    return token_stats(chunks, max_length)


def token_stats(dataset: Dataset, max_length: int) -> dict[str, float]:
    """What the split costs to train on; padding is zero because batches are packed, not padded.

    Counted with Arrow compute over batches of the dataset, so no Python list of all its tokens is ever built."""
    examples = tokens = targets = truncated = longest = rejected = 0
    for batch in dataset.with_format("arrow").iter(batch_size=10 * BATCH_ROWS):
        lengths = pc.list_value_length(batch["input_ids"])
        if "rejected_ids" in batch.column_names:
            rejected += pc.sum(pc.list_value_length(batch["rejected_ids"])).as_py() or 0
        examples += batch.num_rows
        tokens += pc.sum(lengths).as_py() or 0
        longest = max(longest, pc.max(lengths).as_py() or 0)
        targets += pc.sum(pc.not_equal(pc.list_flatten(batch["labels"]), IGNORE_INDEX).cast("int64")).as_py() or 0
        truncated += pc.sum(batch["truncated"].cast("int64")).as_py() or 0
    return {
        "examples": examples,
        "tokens": tokens,
        **({"rejected_answer_tokens": rejected} if "rejected_ids" in dataset.column_names else {}),
        "target_tokens": targets,
        "mean_length": round(tokens / max(examples, 1), 2),
        "max_length": longest,
        "truncated_pct": round(100 * truncated / max(examples, 1), 3),
        "padding_pct": 0.0,
        # What a recipe that pads every example to max_length would spend on padding instead.
        "padding_pct_if_padded_to_max_length": round(100 * (1 - tokens / max(examples * max_length, 1)), 2),
    }
