"""Tokenization of the canonical shapes validate writes: a conversation through the base model's chat template,
loss on its assistant turns only; plain text, every token a target; no padding. A pair is its conversation, ending
with the chosen answer, plus the tokens of the rejected answer after the same prompt.

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

from tasks.core.errors import UserError
from tasks.data.sensitive import refused_rows
from tasks.formats.hermes import TOOLS_HEADER
from tasks.formats.registry import CONVERSATION, PAIR, TEXT, Shape

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


def features_for(shape: Shape) -> Features:
    return PREFERENCE_FEATURES if shape == PAIR else FEATURES


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


def with_examples(messages: list[dict[str, str]], system_prompt: str | None,
                  examples: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """A conversation as the model sees it: its own system message (or system_prompt), then the example turns
    (few-shot or retrieved, for the in-context baselines), then its turns. A system message that only lists the
    tools (tasks/formats/hermes.py) is not the data's own instruction: system_prompt goes before it, where the
    data's own would be."""
    own = messages[:1] if messages[0]["role"] == "system" else []
    system = own or ([{"role": "system", "content": system_prompt}] if system_prompt else [])
    if own and system_prompt and own[0]["content"].startswith(TOOLS_HEADER):
        system = [{"role": "system", "content": f"{system_prompt}\n\n{own[0]['content']}"}]
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


def tokenize_conversations(tokenizer: PreTrainedTokenizerBase, conversations: Sequence[list[dict[str, str]]],
                           system_prompt: str | None, max_length: int, train_on: str,
                           contexts: Sequence[Sequence[tuple[str, str]]] | None = None) -> list[Tokenized | None]:
    """Conversations through the chat template, labels on their assistant turns (all, or only the last);
    generation starts at the last one. `contexts[i]` (few-shot or retrieved exchanges) goes before conversation i.
    None for a conversation with nothing left to learn once it fits max_length. The whole batch is rendered in two
    template calls: every prefix before an answer, then every prefix with its answer."""
    prepared = []
    for i, messages in enumerate(conversations):
        full_messages = with_examples(messages, system_prompt, contexts[i] if contexts is not None else ())
        fixed = len(full_messages) - len(messages) + (messages[0]["role"] == "system")
        full_messages, dropped = fit_conversation(tokenizer, full_messages, fixed, max_length)
        assistant = [j for j, m in enumerate(full_messages) if m["role"] == "assistant" and j >= fixed]
        # A conversation ends with the assistant's answer (validate checks it), so its last target's rendering,
        # prefix and answer, is the whole conversation.
        prepared.append((full_messages, dropped, assistant if train_on == "all_turns" else assistant[-1:]))
    prefixes = iter(render(tokenizer, [messages[:j] for messages, _, targets in prepared for j in targets], True))
    turns = iter(render(tokenizer, [messages[:j + 1] for messages, _, targets in prepared for j in targets], False))
    pieces: list[Tokenized | None] = []
    for _, dropped, targets in prepared:
        labels: list[int] = []
        prefix = full = []
        for _ in targets:
            prefix, turn = next(prefixes), next(turns)
            if turn[:len(prefix)] != prefix or turn[:len(full)] != full or len(prefix) < len(full):
                raise UserError("the base model's chat template renders a conversation differently once later turns "
                                "follow; assistant-only loss needs a template where each turn extends the one before "
                                "(e.g. ChatML): set tokenize.chat_template")
            labels += [IGNORE_INDEX] * (len(prefix) - len(full)) + turn[len(prefix):]
            full = turn
        labels = labels[:max_length]
        if all(label == IGNORE_INDEX for label in labels):
            pieces.append(None)
            continue
        pieces.append(Tokenized(full[:max_length], labels, min(len(prefix), max_length),
                                dropped or len(full) > max_length))
    return pieces


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


def with_history(frame: pd.DataFrame) -> bool:
    """Whether any conversation has turns before its last question (what the context ablation takes away)."""
    return any(sum(m["role"] == "user" for m in json.loads(messages)) > 1 for messages in frame["messages"])


def last_turn_only(frame: pd.DataFrame) -> pd.DataFrame:
    """Conversations cut to their system message (if any), last user turn and last answer."""
    def cut(messages: list[dict[str, str]]) -> list[dict[str, str]]:
        return [m for m in messages[:1] if m["role"] == "system"] + messages[-2:]

    return pd.DataFrame({"messages": [json.dumps(cut(json.loads(m)), ensure_ascii=False) for m in frame["messages"]]})


def asked(conversation: list[dict[str, str]]) -> str:
    """What a conversation's user said, turn by turn: how reports name it and what retrieval searches by."""
    return " / ".join(m["content"] for m in conversation if m["role"] == "user")


def answered(conversation: list[dict[str, str]]) -> str:
    """A conversation's last answer (validate checks that it ends with one): the reference it is scored against,
    the label of a label task."""
    return conversation[-1]["content"]


def tokenize_rows(rows: dict[str, list], tokenizer: PreTrainedTokenizerBase, shape: Shape,
                  system_prompt: str | None, max_length: int,
                  contexts: Sequence[Context] | None = None, train_on: str = "last_turn") -> dict[str, list]:
    """Tokenize a batch of canonical rows given as columns (`messages`, with `rejected` for pairs, or `text`) into
    the columns of features_for(shape). A conversation keeps what its user asked and its last answer (the
    reference); a pair is its conversation, ending with the chosen answer, plus the tokens of the rejected answer
    in its place; a long text gives several rows. A conversation or pair whose prompt leaves no room for an answer
    within max_length gives no row (the stage counts them).

    `contexts[i]`, when given, is what the in-context baselines show before row i: (question, answer) exchanges
    for conversations, passages for plain text. `train_on` says which assistant turns of a conversation carry
    labels; the held-out ones are scored on their last, and a pair on its last answer.
    """
    out: dict[str, list] = {name: [] for name in features_for(shape)}
    pieces: list[Tokenized] = []
    sources: list[tuple[str, str]] = []
    if shape == TEXT:
        for i, text in enumerate(rows["text"]):
            chunks = tokenize_text(tokenizer, text, max_length, contexts[i] if contexts is not None else ())
            pieces += chunks
            sources += [("", "")] * len(chunks)
    else:
        conversations = [json.loads(messages) for messages in rows["messages"]]
        examples: Sequence[Sequence[tuple[str, str]]] | None = contexts  # type: ignore[assignment]  # exchanges
        tokenized = tokenize_conversations(tokenizer, conversations, system_prompt, max_length,
                                           train_on if shape == CONVERSATION else "last_turn", examples)
        if shape == PAIR:
            instead = [c[:-1] + [{"role": "assistant", "content": r}] for c, r in zip(conversations, rows["rejected"])]
            worse = tokenize_conversations(tokenizer, instead, system_prompt, max_length, "last_turn", examples)
        for i, (conversation, piece) in enumerate(zip(conversations, tokenized)):
            if piece is None:
                continue
            if shape == PAIR:
                rejected = worse[i]
                assert rejected is not None  # the same prompt as the chosen answer's, which fits
                piece = Tokenized(piece.input_ids, piece.labels, piece.prompt_length,
                                  piece.truncated or rejected.truncated)
                out["rejected_ids"].append(rejected.input_ids[rejected.prompt_length:])
            pieces.append(piece)
            sources.append((asked(conversation), answered(conversation)))
    for piece, (prompt, response) in zip(pieces, sources):
        out["input_ids"].append(piece.input_ids)
        out["labels"].append(piece.labels)
        out["prompt_length"].append(piece.prompt_length)
        out["truncated"].append(piece.truncated)
        out["prompt"].append(prompt)
        out["response"].append(response)
    return out


def answerable(frame: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, shape: Shape, system_prompt: str | None,
               max_length: int) -> pd.DataFrame:
    """The held-out rows that keep an answer to score once fitted into max_length, as the fine-tuned model and the
    generalist see them: a conversation or a pair can lose it (tokenize_rows gives no row for it), while the
    in-context baselines, never truncated, would still score it. Every approach is scored on these rows."""
    if shape == TEXT:
        return frame  # a text always keeps its chunks
    # A pair keeps its row exactly when its chosen conversation does (tokenize_rows).
    pieces = tokenize_conversations(tokenizer, [json.loads(messages) for messages in frame["messages"]],
                                    system_prompt, max_length, "last_turn")
    return frame.iloc[[i for i, piece in enumerate(pieces) if piece is not None]].reset_index(drop=True)


@task(cache_policy=NO_CACHE)
def tokenize_split(tokenizer: PreTrainedTokenizerBase, frame: pd.DataFrame, shape: Shape,
                   system_prompt: str | None, max_length: int, contexts: Sequence[Context] | None = None) -> Dataset:
    """Tokenize a split held in memory (the held-out rows the baselines score) into an in-memory dataset."""
    rows = {column: list(frame[column]) for column in frame.columns}
    return Dataset.from_dict(tokenize_rows(rows, tokenizer, shape, system_prompt, max_length, contexts),
                             features=features_for(shape))


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
def tokenize_file(tokenizer: PreTrainedTokenizerBase, parquet: Path, out_dir: Path, shape: Shape,
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
        tag = fingerprint(file_digest(parquet), tokenizer_state(tokenizer), shape, system_prompt, max_length,
                          *([train_on] if shape == CONVERSATION else []))
        with forked_processes_end_quietly():
            tokenized = rows.map(
                tokenize_rows, batched=True, batch_size=BATCH_ROWS, num_proc=processes if processes > 1 else None,
                fn_kwargs={"tokenizer": tokenizer, "shape": shape, "system_prompt": system_prompt,
                           "max_length": max_length, "train_on": train_on},
                remove_columns=rows.column_names, features=features_for(shape),
                cache_file_name=str(Path(work) / "tokens.arrow"),
                load_from_cache_file=False, new_fingerprint=tag, desc=f"tokenize {parquet.stem}")
        save_reproducibly(tokenized, tag, out_dir)
        stats = token_stats(tokenized, max_length)
        if shape != TEXT:  # a row per conversation or pair, none for one with no answer left
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
    chunks = tokenize_split.fn(tokenizer, frame[["text"]].astype(str), TEXT, None, max_length)
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
