"""The rules of a tool-calling conversation in OpenAI's format, one function each, with no validation library: the
tools format checks training data with them (tasks/formats/tools.py, through Great Expectations) and `tailor serve`
checks requests with the same ones.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import numpy as np
from jsonschema import Draft202012Validator, SchemaError

from tasks.formats import hermes

ROLES = ["system", "user", "assistant", "tool"]
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


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


@functools.lru_cache(maxsize=256)
def schema_problem(schema: str) -> str | None:
    """Why a parameters schema (canonical JSON text) is not a valid JSON schema, or None. Cached: checking one
    against the metaschema takes ~3 ms, and most rows of a dataset declare the same few tools. Bounded, as
    `tailor serve` checks each request's tools too: a client sending distinct 1 MiB schemas holds 256 MiB at most."""
    try:
        Draft202012Validator.check_schema(json.loads(schema))
    except SchemaError as error:
        return error.message
    return None


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
        if problem := schema_problem(json.dumps(schema, sort_keys=True)):
            return {}, f"tools[{i}] ({name}): parameters is not a valid JSON schema ({problem})"
        if not isinstance(schema, dict) or schema.get("type") != "object":
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
