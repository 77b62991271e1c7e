"""Tool calls and reasoning traces: the rules validate applies, the one rendering every stage uses (and the exported
chat template reproduces), and the metrics that read the calls back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tasks.evaluate.answer_metrics import (
    PER_EXAMPLE,
    argument_exact,
    argument_match,
    schema_valid,
    tool_selection,
    valid_calls,
)
from tasks.evaluate.comparison import called
from tasks.formats import hermes
from tasks.formats.tool_calls import conversation_problems, read_tools

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo_tools"
REASONING = DEMO.parent / "demo_reasoning"


def rows(path: Path, count: int) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:count]]


def one_call() -> dict:
    return next(row for row in rows(DEMO / "train.jsonl", 50) if len(row["messages"]) == 4)


def parallel() -> dict:
    return next(row for row in rows(DEMO / "train.jsonl", 200) if len(row["messages"]) == 5)


def problems(row: dict) -> list[str | None]:
    declared, problem = read_tools(row.get("tools"))
    assert problem is None
    return conversation_problems(row["messages"], declared)


def test_the_demo_conversations_keep_every_rule() -> None:
    for row in rows(DEMO / "train.jsonl", 600) + rows(REASONING / "train.jsonl", 200):
        assert problems(row) == [None] * len(row["messages"]), row


@pytest.mark.parametrize(("change", "turn", "words"), [
    (lambda m: m[1]["tool_calls"][0]["function"].update(name="get_weather"), 1, "calls 'get_weather', which is not"),
    (lambda m: m[1]["tool_calls"][0]["function"].update(arguments="{oops"), 1, "are not JSON"),
    (lambda m: m[1]["tool_calls"][0]["function"].update(arguments="[1, 2]"), 1, "not a JSON object"),
    (lambda m: m[1]["tool_calls"][0]["function"].update(arguments='{"x": 1}'), 1, "do not match its parameters"),
    (lambda m: m.pop(2), 2, "has no tool result before this message"),
    (lambda m: m[2].update(tool_call_id="call_nobody"), 2, "answers no pending call"),
    (lambda m: m.pop(), 2, "ends with the assistant's answer"),
    (lambda m: m[3].update(content="<think>a"), 3, "unclosed <think> tag"),
    (lambda m: m[3].update(content="<think>a<think>b</think></think>c"), 3, "nested <think> tags"),
    (lambda m: m[3].update(content="c </think>"), 3, "a </think> with no <think>"),
    (lambda m: m[3].update(content="ok <think>late</think>"), 3, "does not open the message"),
    (lambda m: m[3].update(content="<think>x</think> y", reasoning_content="z"), 3, "the trace is given once"),
    (lambda m: m.insert(1, {"role": "user", "content": "again?"}), 1, "a assistant message comes here"),
])
def test_each_broken_rule_is_named_at_its_turn(change, turn: int, words: str) -> None:
    row = json.loads(json.dumps(one_call()))
    change(row["messages"])
    found = problems(row)
    assert found[turn] is not None and words in found[turn], found
    assert all(problem is None for problem in found[:turn]), found  # named where it happens, not before


def test_bad_tool_definitions_are_refused() -> None:
    assert "not a list" in read_tools('{"type": "function"}')[1]
    assert "not {" in read_tools([{"type": "function"}])[1]
    bad_schema = [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]
    for _ in range(2):  # the second row declaring it is refused alike (the check is cached by the schema's text)
        assert "not a valid JSON schema" in read_tools(bad_schema)[1]
    always = [{"type": "function", "function": {"name": "f", "parameters": True}}]  # valid JSON schema, not an object
    assert "must be a JSON schema of type object" in read_tools(always)[1]
    twice = [{"type": "function", "function": {"name": "f"}}] * 2
    assert "is not unique" in read_tools(twice)[1]
    assert read_tools(None) == ({}, None)


def test_the_rendering_is_plain_chatml_with_the_calls_in_hermes_tags() -> None:
    row = parallel()
    rendered = hermes.render(row["messages"], row["tools"], keep_reasoning=True)
    assert [m["role"] for m in rendered] == ["system", "user", "assistant", "user", "assistant"]
    assert hermes.declared_tools(rendered) == row["tools"]
    calls = rendered[2]["content"].split("\n")
    assert calls[0] == "<tool_call>" and json.loads(calls[1])["name"] == row["messages"][1]["tool_calls"][0][
        "function"]["name"]
    assert rendered[3]["content"].count("<tool_response>") == 2  # both results in one user turn, in order
    assert hermes.first_answer(rendered) == rendered[:3]
    parsed = hermes.parse(rendered[2]["content"])
    assert parsed.content == "" and parsed.valid_calls and len(parsed.calls) == 2


def test_both_spellings_of_a_trace_render_the_same_and_strip_alike() -> None:
    spelled = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "4 books.", "reasoning_content": "2+2"}]
    inline = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>\n2+2\n</think>\n\n4 books."}]
    assert hermes.render(spelled, [], True) == hermes.render(inline, [], True)
    assert hermes.render(spelled, [], True)[1]["content"] == "<think>\n2+2\n</think>\n\n4 books."
    assert hermes.render(inline, [], False)[1]["content"] == "4 books."
    assert hermes.final_answer("<think>\nwork\n</think>\n\n4 books.") == "4 books."
    assert PER_EXAMPLE["exact_match"](["<think>x</think>\n4 books."], ["4 books."]) == [1.0]


def test_the_exported_template_renders_a_tool_conversation_as_training_does(tiny_model_dir: Path) -> None:
    """The Jinja prelude (what the GGUF carries) and hermes.render (what training, evaluation and serving use)
    give the same prompt, and so the same tokens, for calls, parallel calls, results, traces and plain turns."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    plain_template = tokenizer.chat_template
    conversations = [one_call(), parallel(), *rows(REASONING / "train.jsonl", 2),
                     {"messages": [{"role": "system", "content": "Be brief."}, *one_call()["messages"]],
                      "tools": one_call()["tools"]}]
    for keep in (True, False):
        tool_template = hermes.with_tools(plain_template, keep)
        for row in conversations:
            trained = tokenizer.apply_chat_template(hermes.render(row["messages"], row.get("tools") or [], keep),
                                                    chat_template=plain_template, tokenize=False)
            exported = tokenizer.apply_chat_template(row["messages"], tools=row.get("tools"),
                                                     chat_template=tool_template, tokenize=False)
            assert exported == trained


REFERENCE = hermes.call_text("add_days", {"date": "2031-01-01", "days": 7})
TOOLS = [{"type": "function", "function": {"name": "add_days", "parameters": {
    "type": "object", "properties": {"date": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["date", "days"]}}}]


@pytest.mark.parametrize(("prediction", "selection", "exact", "match", "valid", "schema"), [
    (REFERENCE, 1, 1, 1, 1, 1),
    (hermes.call_text("add_days", {"days": 7.0, "date": "2031-01-01"}), 1, 1, 1, 1, 1),  # order, 7 vs 7.0
    (hermes.call_text("add_days", {"date": "2031-01-02", "days": 7}), 1, 0, 0.5, 1, 1),
    (hermes.call_text("add_days", {"date": "2031-01-01", "days": "7"}), 1, 0, 0.5, 1, 0),  # against the schema
    (hermes.call_text("weekday", {"date": "2031-01-01"}), 0, 0, 0, 1, 0),  # a tool not offered
    ("<tool_call>\n{\"name\": \"add_days\", \"arguments\": {\"date\": \n</tool_call>", 0, 0, 0, 0, 0),
    ("It is 2031-01-08.", 0, 0, 0, 1, 1),
])
def test_tool_metrics(prediction: str, selection: float, exact: float, match: float, valid: float,
                      schema: float) -> None:
    assert tool_selection([prediction], [REFERENCE]) == [selection]
    assert argument_exact([prediction], [REFERENCE]) == [exact]
    assert argument_match([prediction], [REFERENCE]) == [match]
    assert valid_calls([prediction], [REFERENCE]) == [valid]
    assert schema_valid([prediction], [TOOLS]) == [schema]


def test_a_text_answer_where_one_is_expected_scores_full_marks() -> None:
    assert tool_selection(["Sorry, I can't book that."], ["I can't book flights."]) == [1.0]
    assert argument_match(["No."], ["I can't."]) == [1.0]
    assert argument_match([REFERENCE], ["I can't."]) == [0.0]
    assert called("text") == "(no call)" and called(REFERENCE + "\n" + REFERENCE) == "add_days + add_days"


@pytest.mark.parametrize("step", [1, 3, 1000])
@pytest.mark.parametrize(("text", "calls", "reasoning", "content", "called"), [
    ("<think>\nadd 2 and 2\n</think>\n\nIt is 4.", True, "add 2 and 2", "It is 4.", []),
    ("Sure.\n" + hermes.call_text("f", {"a": 1}) + "\n" + hermes.call_text("g", {"b": [1, 2]}), True, "", "Sure.",
     [("f", {"a": 1}), ("g", {"b": [1, 2]})]),
    (hermes.call_text("f", {"a": 1})[:-5], True, "", hermes.call_text("f", {"a": 1})[:-5], []),  # cut off: text
    ("plain <tool text", True, "", "plain <tool text", []),
    (hermes.call_text("f", {"a": 1}), False, "", hermes.call_text("f", {"a": 1}), []),  # no tools offered
])
def test_a_streamed_answer_is_read_into_trace_text_and_calls_whatever_its_pieces(
        step: int, text: str, calls: bool, reasoning: str, content: str, called: list) -> None:
    reader = hermes.Reader(calls)
    pieces = [reader.feed(text[i:i + step]) for i in range(0, len(text), step)] + [reader.finish()]
    assert "".join(p.reasoning for p in pieces) == reasoning
    assert "".join(p.content for p in pieces) == content
    assert [call for p in pieces for call in p.calls] == called
