"""Conversations (`data.format: chat`): each row's list of messages, read in the file's own spelling (OpenAI's
role/content, or ShareGPT's from/value with its role names), a one-row-per-message view that validation checks,
and the canonical form the later stages read (a JSON list of {"role", "content"} with system/user/assistant)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import numpy as np
import pandas as pd

from tasks.core.params import DataParams, MessageFields, ValidateParams
from tasks.data.validation import Checks, Chunks, text_expectations, with_card_check
from tasks.formats.format import Format, conversation_json

ROLES = ["system", "user", "assistant"]
# The per-message view's columns: where the message is (the file's line), what it says, and what the rules need.
TURN_COLUMNS = ["line", "turn", "role", "content", "expected_role", "final_role", "problem", "conversation",
                "opening"]


def parse_messages(value: Any, fields: MessageFields) -> list[dict[str, Any]] | str:
    """The conversation as [{"role", "content"}] with the file's role names mapped, or why it is not one."""
    if isinstance(value, str):  # a CSV cell, or a string column holding JSON
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return "messages is not a JSON list"
    if isinstance(value, np.ndarray):  # a Parquet list column
        value = value.tolist()
    if not isinstance(value, list) or not value:
        return "messages is not a non-empty list"
    messages = []
    for message in value:
        if not isinstance(message, dict) or fields.role not in message or fields.content not in message:
            return f"a message is not an object with '{fields.role}' and '{fields.content}'"
        role = message[fields.role]
        messages.append({"role": fields.roles.get(role, role) if isinstance(role, str) else role,
                         "content": message[fields.content]})
    return messages


def message_view(chunks: Iterator[pd.DataFrame], column: str, view_columns: list[str],
                 conversation_rows: Callable[[int, dict[str, Any]], list[dict[str, Any]]],
                 also_read: tuple[str, ...] = ()) -> Iterator[pd.DataFrame]:
    """One row per message, numbered across the whole split: `conversation_rows(line, row)` gives the rows of the
    conversation on that line of the file (a conversation format's own view), from `row`'s `column` and any of
    `also_read` the file has (only those: a file's other columns are never copied row by row); a chunk without
    `column` becomes one row whose `problem` names the column."""
    start = 0
    for chunk in chunks:
        rows: list[dict[str, Any]] = []
        if column not in chunk:
            rows.append(dict.fromkeys(view_columns) | {
                "line": int(chunk.index[0]) + 1,
                "problem": f"no '{column}' column (map yours under data.columns.messages)"})
        else:
            read = chunk[[column, *(name for name in also_read if name in chunk and name != column)]]
            for index, row in zip(read.index, read.to_dict("records")):
                rows += conversation_rows(int(index) + 1, row)
        frame = pd.DataFrame(rows, columns=view_columns, dtype=object)
        frame.index = pd.RangeIndex(start, start + len(frame))
        start += len(frame)
        yield frame


def turn_view(chunks: Iterator[pd.DataFrame], column: str, fields: MessageFields) -> Iterator[pd.DataFrame]:
    """One row per message, with the conversation's line in the file.

    The conversation rules become per-message values GX checks: `expected_role` is what alternation asks for
    at that place (an optional system message first, then user, assistant, user, ...), `final_role` is set on
    the last message only, `conversation` (the whole conversation, on its first message) is what must be unique,
    and `opening` (its first user message) what must not occur in train for a held-out conversation. A row that
    is not a list of messages becomes one row whose `problem` says why."""
    def conversation_rows(line: int, row: dict[str, Any]) -> list[dict[str, Any]]:
        messages = parse_messages(row[column], fields)
        if isinstance(messages, str):
            return [dict.fromkeys(TURN_COLUMNS) | {"line": line, "turn": 1, "problem": messages}]
        offset = 1 if messages[0]["role"] == "system" else 0
        opening = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
        return [{
            "line": line, "turn": turn + 1, "role": message["role"], "content": message["content"],
            "expected_role": "system" if turn < offset else ROLES[1 + (turn - offset) % 2],
            "final_role": message["role"] if turn == len(messages) - 1 else None,
            "problem": None,
            "conversation": conversation_json(messages) if turn == 0 else None,
            "opening": message["content"] if turn == opening else None,
        } for turn, message in enumerate(messages)]

    return message_view(chunks, column, TURN_COLUMNS, conversation_rows)


def canonical_column(frame: pd.DataFrame, column: str, fields: MessageFields) -> pd.DataFrame:
    """A validated chunk as the pipeline's `messages` column (validation has passed, so every row parses)."""
    parsed = [parse_messages(value, fields) for value in frame[column]]
    return pd.DataFrame({"messages": [conversation_json(messages) for messages in parsed
                                      if not isinstance(messages, str)]})


def conversation_suite(name: str, limits: ValidateParams, min_rows: int, forbidden: dict[str, list[str]],
                       rules: list[Any]) -> gx.ExpectationSuite:
    """The expectations of a split of conversations (checked on a one-row-per-message view with the columns line,
    content, conversation and opening): the format's own `rules`, then what every conversation format checks."""
    suite = gx.ExpectationSuite(name=name)
    for expectation in [
        gxe.ExpectColumnUniqueValueCountToBeBetween(column="line", min_value=min_rows,
                                                    description=f"at least {min_rows} conversations"),
        *rules,
        *text_expectations("content", limits),
        gxe.ExpectColumnValuesToBeUnique(column="conversation", description="no duplicate conversations"),
        *[gxe.ExpectColumnValuesToNotBeInSet(column=column, value_set=values, description="no held-out conversation "
                                             "opens with a user message seen in train")
          for column, values in forbidden.items()],
    ]:
        suite.add_expectation(expectation)
    return suite


def conversation_checks(turns: Callable[[Chunks], Iterator[pd.DataFrame]], limits: ValidateParams,
                        rules: Callable[[], list[Any]]) -> Checks:
    """How a conversation format is checked: on `turns`, its one-row-per-message view of a split, with the card
    check beside each message's text, by its `rules` (made anew for each split's suite: an expectation belongs to
    one suite); a held-out conversation may not open with a user message seen in train."""
    def view(chunks: Chunks) -> Chunks:
        def rows() -> Iterator[pd.DataFrame]:
            return turns(chunks)

        return with_card_check(rows, ["content"]) if limits.pii else rows

    return Checks(view, lambda name, min_rows, forbidden, present: conversation_suite(
        name, limits, min_rows, forbidden, rules()), "opening", ["line", "conversation", "opening"])


def columns(data: DataParams) -> dict[str, str]:
    return {"messages": data.columns.messages}


def checks(data: DataParams, limits: ValidateParams) -> Checks:
    """The conversation rules: roles, alternation and the final answer, on each message of the view."""
    return conversation_checks(lambda chunks: turn_view(chunks(), data.columns.messages, data.messages), limits, lambda: [
        gxe.ExpectColumnValuesToBeNull(column="problem", description="each row's messages are a list of objects "
                                       "with a role and a content (names under data.messages)"),
        gxe.ExpectColumnValuesToBeInSet(column="role", value_set=ROLES, description=f"roles are one of {ROLES} "
                                        "(map other names under data.messages.roles)"),
        gxe.ExpectColumnPairValuesToBeEqual(
            column_A="role", column_B="expected_role", description="at most one system message, and only first; "
                                                                   "then user and assistant alternate, user first"),
        gxe.ExpectColumnValuesToBeInSet(column="final_role", value_set=["assistant"],
                                        description="the last message is the assistant's"),
    ])


FORMAT = Format(columns, checks, lambda chunk, data: canonical_column(chunk, data.columns.messages, data.messages))
