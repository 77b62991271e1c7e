"""The text convention tool calls and reasoning traces are written in (Hermes, as Qwen2.5's chat template writes it
inside ChatML): one module, so that validation, training, evaluation, `tailor serve` and the exported template
write and read exactly the same text.

- The tools are listed in the system message, one JSON definition a line between <tools> and </tools>.
- An assistant's calls follow its text (if any), each `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`.
- The results of consecutive `tool` messages become one user message of `<tool_response>` blocks.
- A reasoning trace opens the assistant's message: `<think>\\n...\\n</think>\\n\\n` then the answer.

A conversation rendered so is a plain system/user/assistant conversation: every later stage reads it as it reads
any other, and the loss falls on the assistant's text and calls, never on tool results (a user turn).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOLS_HEADER = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided "
                "with function signatures within <tools></tools> XML tags:\n<tools>")
TOOLS_FOOTER = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
                "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
                "<args-json-object>}\n</tool_call>")
CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
TAG = re.compile(r"</?think>")


def dumped(value: Any) -> str:
    """JSON as Jinja's tojson writes it in chat templates (", " and ": " separators, characters kept)."""
    return json.dumps(value, ensure_ascii=False)


def tools_block(tools: list[dict[str, Any]]) -> str:
    return TOOLS_HEADER + "".join("\n" + dumped(tool) for tool in tools) + TOOLS_FOOTER


def call_text(name: str, arguments: str | dict[str, Any]) -> str:
    """A call, its arguments as given: a JSON string kept as it is written (validation checked it), an object
    written as JSON."""
    written = arguments if isinstance(arguments, str) else dumped(arguments)
    return f'{CALL_OPEN}\n{{"name": {dumped(name)}, "arguments": {written}}}\n{CALL_CLOSE}'


def assistant_text(content: str, calls: list[tuple[str, str | dict[str, Any]]], reasoning: str | None) -> str:
    """An assistant message as the model writes it: its trace (when kept), its text, then its calls."""
    parts = [content] if content else []
    parts += [call_text(name, arguments) for name, arguments in calls]
    text = "\n".join(parts)
    return f"{THINK_OPEN}\n{reasoning.strip()}\n{THINK_CLOSE}\n\n{text}" if reasoning else text


def responses_text(results: list[str]) -> str:
    return "\n".join(f"<tool_response>\n{result}\n</tool_response>" for result in results)


def declared_tools(conversation: list[dict[str, str]]) -> list[dict[str, Any]]:
    """The tool definitions a rendered conversation's system message lists (none: [])."""
    system = conversation[0]["content"] if conversation and conversation[0]["role"] == "system" else ""
    if TOOLS_HEADER not in system:
        return []
    block = system.split(TOOLS_HEADER, 1)[1].split(TOOLS_FOOTER, 1)[0]
    return [json.loads(line) for line in block.splitlines() if line.strip()]


def first_answer(conversation: list[dict[str, str]]) -> list[dict[str, str]]:
    """A rendered conversation up to its first assistant message: the turn that calls a tool, or answers without
    one (what a tool-calling evaluation scores)."""
    first = next(i for i, m in enumerate(conversation) if m["role"] == "assistant")
    return conversation[:first + 1]


def render(messages: list[dict[str, Any]], tools: list[dict[str, Any]], keep_reasoning: bool) -> list[dict[str, str]]:
    """An OpenAI-style conversation (checked beforehand: tasks/formats/tools.py) as system/user/assistant messages
    in this convention. Assistant messages may carry `tool_calls` (arguments as a JSON string or an object) and
    `reasoning_content`; a trace written inline as <think>...</think> is read the same way."""
    rendered: list[dict[str, str]] = []
    system = [m["content"] for m in messages[:1] if m["role"] == "system"]
    if tools:
        rendered.append({"role": "system", "content": "\n\n".join(system + [tools_block(tools)])})
    elif system:
        rendered.append({"role": "system", "content": system[0]})
    results: list[str] = []
    for message in messages[len(system):]:
        if message["role"] == "tool":
            results.append(str(message.get("content") or ""))
            continue
        if results:
            rendered.append({"role": "user", "content": responses_text(results)})
            results = []
        if message["role"] != "assistant":
            rendered.append({"role": message["role"], "content": message["content"]})
            continue
        reasoning, content = split_reasoning(message.get("content") or "")
        reasoning = message.get("reasoning_content") or reasoning
        calls = [(call["function"]["name"], call["function"]["arguments"]) for call in message.get("tool_calls") or []]
        rendered.append({"role": "assistant",
                         "content": assistant_text(content, calls, reasoning if keep_reasoning else None)})
    if results:
        rendered.append({"role": "user", "content": responses_text(results)})
    return rendered


def split_reasoning(text: str) -> tuple[str | None, str]:
    """(the trace, the rest) of a message that opens with <think>...</think>; (None, text) of any other."""
    stripped = text.lstrip()
    if not stripped.startswith(THINK_OPEN) or THINK_CLOSE not in stripped:
        return None, text
    trace, rest = stripped[len(THINK_OPEN):].split(THINK_CLOSE, 1)
    return trace.strip(), rest.lstrip()


def tag_problem(text: str) -> str | None:
    """Why a text's <think> tags are not one trace opening the message (None when they are, or there are none)."""
    tags = TAG.findall(text)
    if not tags:
        return None
    if tags != [THINK_OPEN, THINK_CLOSE]:
        depth = 0
        for tag in tags:
            depth += 1 if tag == THINK_OPEN else -1
            if depth > 1:
                return "nested <think> tags"
            if depth < 0:
                return "a </think> with no <think> before it"
        return "unclosed <think> tag" if depth else "more than one <think>...</think> trace"
    if not text.lstrip().startswith(THINK_OPEN):
        return "the <think>...</think> trace does not open the message"
    return None


@dataclass
class Answer:
    """A generated assistant message read back: its trace, its text, and its calls (name and arguments as the model
    wrote them; `arguments` is None where the call's JSON did not parse into a name and an object)."""

    reasoning: str | None
    content: str
    calls: list[tuple[str | None, dict[str, Any] | None]] = field(default_factory=list)

    @property
    def valid_calls(self) -> bool:
        return all(name is not None and arguments is not None for name, arguments in self.calls)


def parse(text: str) -> Answer:
    reasoning, rest = split_reasoning(text)
    calls: list[tuple[str | None, dict[str, Any] | None]] = []
    for body in CALL.findall(rest):
        try:
            call = json.loads(body)
        except json.JSONDecodeError:
            calls.append((None, None))
            continue
        valid = isinstance(call, dict) and isinstance(call.get("name"), str)
        arguments = call.get("arguments") if valid else None
        calls.append((call["name"] if valid else None, arguments if isinstance(arguments, dict) else None))
    if CALL_OPEN in rest and CALL_CLOSE not in rest.rsplit(CALL_OPEN, 1)[1]:
        calls.append((None, None))  # cut off inside a call (the token limit): a call that cannot be made
    return Answer(reasoning, rest.split(CALL_OPEN, 1)[0].strip(), calls)


def final_answer(text: str) -> str:
    """The answer without its reasoning trace: what evaluation scores."""
    return split_reasoning(text)[1]


# The same convention as a Jinja prelude to a chat template: it rewrites `messages` (with `tools`, `tool_calls`,
# `tool` messages and traces) into the rendered conversation `render` writes, then the model's own template renders
# that. An exported GGUF carries it (tasks/release/export.py), so llama.cpp and other Jinja readers render a tool
# conversation as training did; tests/tasks/test_tools_format.py checks the two renderings are the same.
TEMPLATE_PRELUDE = """{%- set keep_reasoning = KEEP %}
{%- set ns = namespace(out=[], results=[], text='', parts=[]) %}
{%- set offered = tools if tools is defined and tools else [] %}
{%- set own = messages[0]['content'] if messages and messages[0]['role'] == 'system' else none %}
{%- if offered %}
    {%- set ns.text = HEADER %}
    {%- for tool in offered %}{%- set ns.text = ns.text ~ '\\n' ~ (tool | tojson) %}{%- endfor %}
    {%- set ns.text = ns.text ~ FOOTER %}
    {%- set ns.out = [{'role': 'system', 'content': (own ~ '\\n\\n' if own is not none else '') ~ ns.text}] %}
{%- elif own is not none %}
    {%- set ns.out = [{'role': 'system', 'content': own}] %}
{%- endif %}
{%- for message in messages[(1 if own is not none else 0):] %}
    {%- if message['role'] == 'tool' %}
        {%- set ns.results = ns.results + ['<tool_response>\\n' ~ (message['content'] or '') ~ '\\n</tool_response>'] %}
    {%- else %}
        {%- if ns.results %}
            {%- set ns.out = ns.out + [{'role': 'user', 'content': ns.results | join('\\n')}] %}
            {%- set ns.results = [] %}
        {%- endif %}
        {%- if message['role'] != 'assistant' %}
            {%- set ns.out = ns.out + [{'role': message['role'], 'content': message['content']}] %}
        {%- else %}
            {%- set ns.text = message['content'] if message['content'] is string else '' %}
            {%- set trace = message['reasoning_content'] if message['reasoning_content'] is defined else none %}
            {%- if ns.text.lstrip().startswith('<think>') and '</think>' in ns.text %}
                {%- set inline = ns.text.lstrip()[7:].split('</think>', 1) %}
                {%- set trace = trace or inline[0].strip() %}
                {%- set ns.text = inline[1].lstrip() %}
            {%- endif %}
            {%- set ns.parts = [ns.text] if ns.text else [] %}
            {%- for call in (message['tool_calls'] if message['tool_calls'] is defined and message['tool_calls'] else []) %}
                {%- set arguments = call['function']['arguments'] %}
                {%- set ns.parts = ns.parts + ['<tool_call>\\n{"name": ' ~ (call['function']['name'] | tojson) ~ ', "arguments": '
                    ~ (arguments if arguments is string else arguments | tojson) ~ '}\\n</tool_call>'] %}
            {%- endfor %}
            {%- set ns.text = ns.parts | join('\\n') %}
            {%- if keep_reasoning and trace %}
                {%- set ns.text = '<think>\\n' ~ trace.strip() ~ '\\n</think>\\n\\n' ~ ns.text %}
            {%- endif %}
            {%- set ns.out = ns.out + [{'role': 'assistant', 'content': ns.text}] %}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if ns.results %}{%- set ns.out = ns.out + [{'role': 'user', 'content': ns.results | join('\\n')}] %}{%- endif %}
{%- set messages = ns.out %}
"""


def with_tools(template: str, keep_reasoning: bool) -> str:
    """A chat template that renders tool conversations in this convention before `template` renders the result."""
    return (TEMPLATE_PRELUDE.replace("KEEP", "true" if keep_reasoning else "false")
            .replace("HEADER", dumped(TOOLS_HEADER)).replace("FOOTER", dumped(TOOLS_FOOTER)) + template)


@dataclass
class Delta:
    """What a streamed answer adds: trace text, answer text, and calls now complete (name, arguments object)."""

    reasoning: str = ""
    content: str = ""
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def held(text: str, tag: str) -> int:
    """How many characters at the end of `text` could be the start of `tag` (kept back until the next token)."""
    return next((n for n in range(min(len(tag) - 1, len(text)), 0, -1) if tag.startswith(text[-n:])), 0)


class Reader:
    """Reads a generated answer as it streams, into the parts an OpenAI-compatible reply has: its reasoning trace
    (`reasoning_content`), its text (`content`) and, when `calls` is on (the request offered tools), its tool
    calls, each handed over once complete. Text that may be the start of a tag is held back until the next token
    says; a call the model did not finish (the token limit) ends up in the text, so nothing written is lost.
    `prefix` is what the reply was begun with (a forced call's opening), read before the generated text."""

    def __init__(self, calls: bool, prefix: str = "") -> None:
        self.text, self.calls_on = prefix, calls
        self.sent_reasoning, self.sent_content, self.sent_calls = 0, 0, 0
        # Each complete call's body, read once: the text is scanned again on every token (a few microseconds of C
        # per kilobyte), but a call's JSON would otherwise be parsed again on every token after it.
        self.read_calls: dict[str, tuple[str | None, dict[str, Any] | None]] = {}

    def feed(self, new: str) -> Delta:
        self.text += new
        return self.delta(final=False)

    def finish(self) -> Delta:
        return self.delta(final=True)

    def parts(self, final: bool) -> tuple[str, str, list[tuple[str, dict[str, Any]]]]:
        """(the trace, the answer text, the complete calls) that can be told so far."""
        text, reasoning = self.text, ""
        stripped = text.lstrip()
        if stripped.startswith(THINK_OPEN):
            trace, closed, rest = stripped[len(THINK_OPEN):].partition(THINK_CLOSE)
            if not closed:
                trace = trace if final else trace[:len(trace) - held(trace, THINK_CLOSE)]
                return trace.lstrip() if final else trace.lstrip().rstrip(), "", []
            reasoning, text = trace.strip(), rest.lstrip()
        elif not final and THINK_OPEN.startswith(stripped) and stripped:
            return "", "", []
        answer, opened, after = text.partition(CALL_OPEN) if self.calls_on else (text, "", "")
        calls: list[tuple[str, dict[str, Any]]] = []
        if opened:
            for body in CALL.findall(CALL_OPEN + after):
                if body not in self.read_calls:
                    self.read_calls[body] = parse(f"{CALL_OPEN}{body}{CALL_CLOSE}").calls[0]
                name, arguments = self.read_calls[body]
                if name is None or arguments is None:
                    break
                calls.append((name, arguments))
            unfinished = len(calls) < (CALL_OPEN + after).count(CALL_OPEN)
            if final and unfinished:  # a call cut off or unreadable: kept as text
                answer = answer + CALL_OPEN + after
        elif not final:
            answer = answer[:len(answer) - held(answer, CALL_OPEN)] if self.calls_on else answer
        return reasoning, answer if final and not opened else answer.rstrip(), calls

    def delta(self, final: bool) -> Delta:
        reasoning, content, calls = self.parts(final)
        delta = Delta(reasoning[self.sent_reasoning:], content[self.sent_content:], calls[self.sent_calls:])
        self.sent_reasoning = max(self.sent_reasoning, len(reasoning))
        self.sent_content = max(self.sent_content, len(content))
        self.sent_calls = max(self.sent_calls, len(calls))
        return delta
