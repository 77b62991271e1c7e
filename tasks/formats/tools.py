"""Agent conversations (`data.format: tools`): OpenAI's fine-tuning format with tool calls and reasoning traces.

Each row holds `messages` and, under data.columns.tools, its `tools` (JSON-schema function definitions). Assistant
messages may carry `tool_calls` ({id, type: function, function: {name, arguments: a JSON string}}, several for
parallel calls) and a reasoning trace (`reasoning_content`, or `<think>...</think>` opening the content: both read
the same way); `tool` messages answer a call by its `tool_call_id`. Validation checks every rule below on a
one-row-per-message view (line and turn named); the canonical form is the conversation in the Hermes convention
(tasks/formats/hermes.py), a plain system/user/assistant conversation every later stage reads as any other.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import great_expectations.expectations as gxe
import pandas as pd

from tasks.core.params import DataParams, ValidateParams
from tasks.data.validation import Checks
from tasks.formats import hermes
from tasks.formats.chat import conversation_checks, message_view
from tasks.formats.format import Format, conversation_json
from tasks.formats.tool_calls import conversation_problems, listed, read_tools

VIEW_COLUMNS = ["line", "turn", "role", "content", "problem", "conversation", "opening"]
RULES = ("roles system (first only), user, assistant, tool; user and assistant alternate, an assistant's calls "
         "are each answered by a tool message with its id before the next assistant message, and the conversation "
         "ends with the assistant's answer; each call names a declared tool and its arguments are JSON that "
         "validates against that tool's parameters; tools are JSON-schema function definitions; one <think> "
         "trace at most, opening the assistant's message")


def message_text(message: Any) -> Any:
    """What a message says, as the text checks (length, personal data, control tokens) read it: an assistant's
    trace, text and call arguments; a tool's result."""
    if not isinstance(message, dict):
        return None
    if message.get("role") != "assistant":
        return message.get("content")
    calls = [(call["function"]["name"], call["function"]["arguments"]) for call in message.get("tool_calls") or []
             if isinstance(call, dict) and isinstance(call.get("function"), dict)]
    return "\n".join(str(part) for part in [message.get("reasoning_content"), message.get("content"),
                                            *[f"{name}({arguments})" for name, arguments in calls]] if part)


def turn_view(chunks: Iterator[pd.DataFrame], data: DataParams) -> Iterator[pd.DataFrame]:
    """One row per message, with its line in the file and the rule it breaks."""
    def conversation_rows(line: int, row: dict[str, Any]) -> list[dict[str, Any]]:
        messages = listed(row[data.columns.messages])
        declared, tools_problem = read_tools(row.get(data.columns.tools))
        if not isinstance(messages, list) or not messages or tools_problem:
            return [dict.fromkeys(VIEW_COLUMNS) | {
                "line": line, "turn": 1, "problem": tools_problem or "messages is not a non-empty JSON list"}]
        problems = conversation_problems(messages, declared)
        opening = next((i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"), None)
        rows = []
        for turn, (message, problem) in enumerate(zip(messages, problems)):
            text = message_text(message)
            rows.append({
                "line": line, "turn": turn + 1, "role": message.get("role") if isinstance(message, dict) else None,
                "content": text, "problem": problem,
                "conversation": json.dumps(messages, sort_keys=True, default=str) if turn == 0 else None,
                "opening": text if turn == opening else None,
            })
        return rows

    return message_view(chunks, data.columns.messages, VIEW_COLUMNS, conversation_rows, (data.columns.tools,))


def columns(data: DataParams) -> dict[str, str]:
    """The column every file needs; data.columns.tools is read where the file has it (a file of reasoning traces
    without tools has none)."""
    return {"messages": data.columns.messages}


def checks(data: DataParams, limits: ValidateParams) -> Checks:
    """Every rule of tasks/formats/tool_calls.py, as the problem of the message that breaks it."""
    return conversation_checks(lambda chunks: turn_view(chunks(), data), limits,
                               lambda: [gxe.ExpectColumnValuesToBeNull(column="problem", description=RULES)])


def canonical(chunk: pd.DataFrame, data: DataParams) -> pd.DataFrame:
    """Validated conversations in the Hermes convention, their traces kept or stripped (data.reasoning)."""
    tools = list(chunk[data.columns.tools].map(listed)) if data.columns.tools in chunk else [None] * len(chunk)
    return pd.DataFrame({"messages": [
        conversation_json(hermes.render(listed(messages), declared or [], data.reasoning == "train"))
        for messages, declared in zip(chunk[data.columns.messages], tools)]})


FORMAT = Format(columns, checks, canonical)
