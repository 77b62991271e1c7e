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
import re
from collections.abc import Iterator
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
from jsonschema import Draft202012Validator, SchemaError

from tasks.core.params import DataParams, ValidateParams
from tasks.data.validation import Checks, Chunks, text_expectations, with_card_check
from tasks.formats import hermes
from tasks.formats.format import Format, conversation_json

ROLES = ["system", "user", "assistant", "tool"]
VIEW_COLUMNS = ["line", "turn", "role", "content", "problem", "conversation", "opening"]
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
RULES = ("roles system (first only), user, assistant, tool; user and assistant alternate, an assistant's calls "
         "are each answered by a tool message with its id before the next assistant message, and the conversation "
         "ends with the assistant's answer; each call names a declared tool and its arguments are JSON that "
         "validates against that tool's parameters; tools are JSON-schema function definitions; one <think> "
         "trace at most, opening the assistant's message")


def plain(value: Any) -> Any:
    """Parquet's nested values (arrays) as lists, all the way down."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list):
        return [plain(item) for item in value]
    return {key: plain(item) for key, item in value.items()} if isinstance(value, dict) else value


def listed(value: Any) -> Any:
    """A list-valued cell as a list: JSON text (JSONL, CSV), a Parquet list, or as it is; a missing cell as None."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, float) and np.isnan(value):
        return None
    return plain(value)


def read_tools(value: Any) -> tuple[dict[str, dict[str, Any]], str | None]:
    """The declared tools by name (their parameter schemas), or why the cell is not a list of definitions."""
    value = listed(value)
    if value is None:
        return {}, None
    if not isinstance(value, list):
        return {}, "tools is not a list of function definitions"
    declared: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            return {}, f"tools[{i}] is not {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}"
        name, schema = function["name"], function.get("parameters") or {"type": "object", "properties": {}}
        if not TOOL_NAME.fullmatch(name) or name in declared:
            return {}, f"tools[{i}]: name {name!r} is not unique letters, digits, _ or - (64 at most)"
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as error:
            return {}, f"tools[{i}] ({name}): parameters is not a valid JSON schema ({error.message})"
        if schema.get("type") != "object":
            return {}, f"tools[{i}] ({name}): parameters must be a JSON schema of type object"
        declared[name] = schema
    return declared, None


def call_problem(call: Any, declared: dict[str, dict[str, Any]]) -> str | None:
    """Why one entry of an assistant's tool_calls cannot be made (None when it can)."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(call.get("id"), str) or not call["id"]:
        return "a tool call is not {\"id\", \"type\": \"function\", \"function\": {\"name\", \"arguments\"}}"
    name = function.get("name")
    if name not in declared:
        return f"calls {name!r}, which is not among the conversation's tools ({', '.join(declared) or 'none'})"
    if not isinstance(function.get("arguments"), str):
        return f"the arguments of {name} are not a JSON string"
    try:
        arguments = json.loads(function["arguments"])
    except json.JSONDecodeError as error:
        return f"the arguments of {name} are not JSON ({error.msg})"
    if not isinstance(arguments, dict):
        return f"the arguments of {name} are not a JSON object"
    error = next(iter(Draft202012Validator(declared[name]).iter_errors(arguments)), None)
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path)
        return f"the arguments of {name} do not match its parameters{' at ' + where if where else ''}: {error.message}"
    return None


def message_problem(message: Any, turn: int, previous: str | None, pending: dict[str, str],
                    declared: dict[str, dict[str, Any]]) -> str | None:
    """Why message `turn` (0-based) breaks a rule, given the role before it and the calls not answered yet (which
    this updates)."""
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        return f"a message is an object whose role is one of {ROLES}"
    role, content = message["role"], message.get("content")
    if role == "tool":
        if message.get("tool_call_id") not in pending:
            return "a tool message answers no pending call (its tool_call_id names none)"
        del pending[message["tool_call_id"]]
        return None if isinstance(content, str) else "a tool result is not text"
    if pending and role != "tool":
        return f"the call to {next(iter(pending.values()))} has no tool result before this message"
    if role == "system":
        return None if turn == 0 else "a system message comes first or not at all"
    expected = "user" if previous in (None, "system", "assistant") else "assistant"
    if role != expected:
        return f"a {expected} message comes here, not a {role} one"
    if role == "user":
        return None if isinstance(content, str) else "a user message's content is not text"
    calls = message.get("tool_calls") or []
    if content is not None and not isinstance(content, str) or not isinstance(calls, list):
        return "an assistant message's content is text (or null with tool_calls) and its tool_calls a list"
    if not content and not calls:
        return "an assistant message has neither text nor tool calls"
    trace = message.get("reasoning_content")
    if trace is not None and (not isinstance(trace, str) or hermes.TAG.search(content or "")):
        return "reasoning_content is text, and the trace is given once (not also as <think> in the content)"
    if problem := hermes.tag_problem(content or ""):
        return problem
    found = [call_problem(call, declared) for call in calls]
    for call in calls:  # a refused call's result is still its result: one mistake, one problem
        if isinstance(call, dict) and isinstance(call.get("id"), str) and isinstance(call.get("function"), dict):
            pending[call["id"]] = str(call["function"].get("name"))
    return next((problem for problem in found if problem), None)


def conversation_problems(messages: list[Any], declared: dict[str, dict[str, Any]]) -> list[str | None]:
    """Each message's problem (None where it keeps every rule), the last message's including how it ends."""
    pending: dict[str, str] = {}
    problems, previous = [], None
    for turn, message in enumerate(messages):
        problems.append(message_problem(message, turn, previous, pending, declared))
        previous = message.get("role") if isinstance(message, dict) else None
    last = messages[-1]
    if problems[-1] is None and (not isinstance(last, dict) or last.get("role") != "assistant" or
                                 last.get("tool_calls")):
        problems[-1] = "the conversation ends with the assistant's answer (after the results of its calls)"
    return problems


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
    """One row per message, numbered across the split, with its line in the file and the rule it breaks."""
    start = 0
    column, tools_column = data.columns.messages, data.columns.tools
    for chunk in chunks:
        rows: list[dict[str, Any]] = []
        if column not in chunk:
            rows.append(dict.fromkeys(VIEW_COLUMNS) | {
                "line": int(chunk.index[0]) + 1,
                "problem": f"no '{column}' column (map yours under data.columns.messages)"})
        for index, value in (chunk[column].items() if column in chunk else []):
            line, messages = int(index) + 1, listed(value)
            declared, tools_problem = read_tools(chunk[tools_column][index] if tools_column in chunk else None)
            if not isinstance(messages, list) or not messages or tools_problem:
                rows.append(dict.fromkeys(VIEW_COLUMNS) | {
                    "line": line, "turn": 1, "problem": tools_problem or "messages is not a non-empty JSON list"})
                continue
            problems = conversation_problems(messages, declared)
            opening = next((i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"),
                           None)
            for turn, (message, problem) in enumerate(zip(messages, problems)):
                rows.append({
                    "line": line, "turn": turn + 1, "role": message.get("role") if isinstance(message, dict) else None,
                    "content": message_text(message), "problem": problem,
                    "conversation": json.dumps(messages, sort_keys=True, default=str) if turn == 0 else None,
                    "opening": message_text(message) if turn == opening else None,
                })
        frame = pd.DataFrame(rows, columns=VIEW_COLUMNS, dtype=object)
        frame.index = pd.RangeIndex(start, start + len(frame))
        start += len(frame)
        yield frame


def build_suite(name: str, limits: ValidateParams, min_rows: int, forbidden: dict[str, list[str]]
                ) -> gx.ExpectationSuite:
    suite = gx.ExpectationSuite(name=name)
    for expectation in [
        gxe.ExpectColumnUniqueValueCountToBeBetween(column="line", min_value=min_rows,
                                                    description=f"at least {min_rows} conversations"),
        gxe.ExpectColumnValuesToBeNull(column="problem", description=RULES),
        *text_expectations("content", limits),
        gxe.ExpectColumnValuesToBeUnique(column="conversation", description="no duplicate conversations"),
        *[gxe.ExpectColumnValuesToNotBeInSet(column=column, value_set=values, description="no held-out conversation "
                                             "opens with a user message seen in train")
          for column, values in forbidden.items()],
    ]:
        suite.add_expectation(expectation)
    return suite


def columns(data: DataParams) -> dict[str, str]:
    """The column every file needs; data.columns.tools is read where the file has it (a file of reasoning traces
    without tools has none)."""
    return {"messages": data.columns.messages}


def checks(data: DataParams, limits: ValidateParams) -> Checks:
    def view(chunks: Chunks) -> Chunks:
        def turns() -> Iterator[pd.DataFrame]:
            return turn_view(chunks(), data)

        return with_card_check(turns, ["content"]) if limits.pii else turns

    return Checks(view, lambda name, min_rows, forbidden, present: build_suite(name, limits, min_rows, forbidden),
                  "opening", ["line", "conversation", "opening"])


def canonical(chunk: pd.DataFrame, data: DataParams) -> pd.DataFrame:
    """Validated conversations in the Hermes convention, their traces kept or stripped (data.reasoning)."""
    tools = list(chunk[data.columns.tools].map(listed)) if data.columns.tools in chunk else [None] * len(chunk)
    return pd.DataFrame({"messages": [
        conversation_json(hermes.render(listed(messages), declared or [], data.reasoning == "train"))
        for messages, declared in zip(chunk[data.columns.messages], tools)]})


FORMAT = Format(columns, checks, canonical)
