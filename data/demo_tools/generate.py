"""Write the tool-calling demo (train.jsonl, eval.jsonl) and the reasoning demo (../demo_reasoning): deterministic,
offline, every tool result computed by running the real function (Python's datetime, hashlib and statistics).

Tool-calling conversations, in OpenAI's fine-tuning format: a user asks; the assistant calls one tool, two in
parallel, or none (a question the tools do not serve); each call is answered by a `tool` message with the function's
real result; the assistant answers with it. Each conversation declares two of the tools (the ones it needs, and others
to choose from), in a seeded order. What memorizing cannot win:
- `weekday` is declared in training conversations but called only in held-out ones, so choosing it is read from its
  description;
- the held-out arguments (dates, numbers, texts) are drawn from ranges the training ones never use.

Reasoning conversations: arithmetic word problems whose assistant answer carries its working as `reasoning_content`
(half the rows) or inline `<think>...</think>` (the other half): both spellings the format reads.

Run: python data/demo_tools/generate.py
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SIZES = {"train": 600, "eval": 120}
REASONING_SIZES = {"train": 200, "eval": 40}
FACTORS = {("km", "mi"): 0.621371, ("mi", "km"): 1.609344, ("kg", "lb"): 2.204623, ("lb", "kg"): 0.453592}


def add_days(date: str, days: int) -> str:
    return (dt.date.fromisoformat(date) + dt.timedelta(days=days)).isoformat()


def days_between(start: str, end: str) -> int:
    return (dt.date.fromisoformat(end) - dt.date.fromisoformat(start)).days


def weekday(date: str) -> str:
    return dt.date.fromisoformat(date).strftime("%A")


def convert(value: float, from_unit: str, to_unit: str) -> float:
    return round(value * FACTORS[from_unit, to_unit], 2)


def digest(text: str, algorithm: str) -> str:
    return hashlib.new(algorithm, text.encode()).hexdigest()[:16]


def summarize(numbers: list[float], statistic: str) -> float:
    return round(getattr(statistics, statistic)(numbers), 2)


def schema(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


DATE = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"}  # YYYY-MM-DD
TOOLS: dict[str, tuple[Callable[..., Any], str, dict[str, Any]]] = {
    "add_days": (add_days, "The date a number of days after (or before, if negative) a date.",
                 schema({"date": DATE, "days": {"type": "integer"}})),
    "days_between": (days_between, "How many days lie from one date to another.",
                     schema({"start": DATE, "end": DATE})),
    "weekday": (weekday, "The day of the week a date falls on.", schema({"date": DATE})),
    "convert_units": (convert, "Convert a quantity between km and mi, or kg and lb.",
                      schema({"value": {"type": "number"}, "from_unit": {"enum": ["km", "mi", "kg", "lb"]},
                              "to_unit": {"enum": ["km", "mi", "kg", "lb"]}})),
    "hash_text": (digest, "The first 16 hex digits of a text's md5, sha1 or sha256 digest.",
                  schema({"text": {"type": "string"}, "algorithm": {"enum": ["md5", "sha1", "sha256"]}})),
    "summarize_numbers": (summarize, "The mean, median or standard deviation of a list of numbers.",
                          schema({"numbers": {"type": "array", "items": {"type": "number"}, "minItems": 2},
                                  "statistic": {"enum": ["mean", "median", "stdev"]}})),
}
WORDS = ["amber", "basil", "cedar", "delta", "ember", "fjord", "grove", "harbor", "indigo", "juniper", "kestrel",
         "lumen", "meadow", "nectar", "orchid", "pebble", "quartz", "raven", "saffron", "tundra"]
# Asks no tool serves (answered in plain text): held-out ones name other places.
ERRANDS = ["a flight", "a hotel room", "a table for two", "a taxi", "theatre tickets", "a rental car"]
PLACES = {False: ["Lisbon", "Oslo", "Porto", "Lyon", "Krakow", "Ghent", "Bergen", "Seville"],
          True: ["Quito", "Hobart", "Tromso", "Cusco"]}


def definition(name: str) -> dict[str, Any]:
    _, description, parameters = TOOLS[name]
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


class Draw:
    """Arguments from the split's own ranges: held-out values never occur in training."""

    def __init__(self, rng: random.Random, held_out: bool) -> None:
        self.rng, self.held_out = rng, held_out

    def date(self) -> str:
        year = self.rng.choice([2031, 2032] if self.held_out else [2024, 2025, 2026])
        return (dt.date(year, 1, 1) + dt.timedelta(days=self.rng.randrange(365))).isoformat()

    def number(self) -> float:
        return float(self.rng.randrange(101, 200) if self.held_out else self.rng.randrange(1, 100))

    def text(self) -> str:
        words = WORDS[10:] if self.held_out else WORDS[:10]
        return " ".join(self.rng.sample(words, 2))


def request(name: str, draw: Draw) -> tuple[str, dict[str, Any], Callable[[Any], str]]:
    """A user's ask for one tool, its arguments, and how the answer states the result."""
    rng = draw.rng
    if name == "add_days":
        date, days = draw.date(), rng.choice([7, 10, 14, 30, 45, 90, -7, -30])
        return (f"What date is {days} days after {date}?", {"date": date, "days": days},
                lambda r: f"{days} days after {date} is {r}.")
    if name == "days_between":
        start, end = sorted([draw.date(), draw.date()])
        return (f"How many days are there from {start} to {end}?", {"start": start, "end": end},
                lambda r: f"There are {r} days from {start} to {end}.")
    if name == "weekday":
        date = draw.date()
        return f"Which day of the week is {date}?", {"date": date}, lambda r: f"{date} is a {r}."
    if name == "convert_units":
        value = draw.number()
        source, target = rng.choice(list(FACTORS))
        return (f"Convert {value:g} {source} to {target}.", {"value": value, "from_unit": source, "to_unit": target},
                lambda r: f"{value:g} {source} is {r} {target}.")
    if name == "hash_text":
        text, algorithm = draw.text(), rng.choice(["md5", "sha1", "sha256"])
        return (f"Give me the {algorithm} of \"{text}\".", {"text": text, "algorithm": algorithm},
                lambda r: f"The {algorithm} of \"{text}\" begins {r}.")
    numbers = [draw.number() for _ in range(rng.randrange(3, 6))]
    statistic = rng.choice(["mean", "median", "stdev"])
    return (f"What is the {statistic} of {', '.join(f'{n:g}' for n in numbers)}?",
            {"numbers": numbers, "statistic": statistic}, lambda r: f"The {statistic} is {r}.")


def conversation(rng: random.Random, index: int, held_out: bool) -> dict[str, Any]:
    draw = Draw(rng, held_out)
    trained = [name for name in TOOLS if name != "weekday"]
    kind = rng.choices(["single", "parallel", "plain"], weights=[6, 3, 1])[0]
    wanted = {"single": 1, "parallel": 2, "plain": 0}[kind]
    names = rng.sample(["weekday", *rng.sample(trained, 3)] if held_out and rng.random() < 0.4 else trained, wanted)
    declared = names + rng.sample([n for n in TOOLS if n not in names], max(2 - wanted, 0))
    rng.shuffle(declared)
    tools = [definition(name) for name in declared]
    if kind == "plain":
        errand, place, date = rng.choice(ERRANDS), rng.choice(PLACES[held_out]), draw.date()
        answer = (f"I can't book {errand}: my tools work with dates, units, hashes and numbers. I can count the "
                  f"days until {date} if that helps.")
        return {"tools": tools, "messages": [{"role": "user", "content": f"Can you book {errand} in {place} on "
                                                                         f"{date}?"},
                                             {"role": "assistant", "content": answer}]}
    asks = [request(name, draw) for name in names]
    calls, results, answers = [], [], []
    for i, (name, (_, arguments, says)) in enumerate(zip(names, asks)):
        call_id = f"call_{index}_{i}"
        result = TOOLS[name][0](**arguments)
        calls.append({"id": call_id, "type": "function",
                      "function": {"name": name, "arguments": json.dumps(arguments)}})
        results.append({"role": "tool", "tool_call_id": call_id, "content": json.dumps({"result": result})})
        answers.append(says(result))
    question = " Also, ".join([asks[0][0]] + [ask[0][0].lower() + ask[0][1:] for ask in asks[1:]])
    return {"tools": tools, "messages": [{"role": "user", "content": question},
                                         {"role": "assistant", "content": None, "tool_calls": calls},
                                         *results, {"role": "assistant", "content": " ".join(answers)}]}


def word_problem(rng: random.Random, index: int, held_out: bool) -> dict[str, Any]:
    """A two-step arithmetic problem, its working as a trace, and the number as the answer."""
    base = rng.randrange(40, 90) if held_out else rng.randrange(2, 39)
    each, boxes, given = rng.randrange(2, 9), rng.randrange(2, 6), rng.randrange(1, 10)
    total = base + each * boxes - given
    question = (f"A shelf holds {base} books. {boxes} boxes of {each} books arrive, then {given} books are lent out. "
                "How many books are on the shelf?")
    trace = f"{boxes} boxes of {each} is {each * boxes}. {base} + {each * boxes} = {base + each * boxes}. " \
            f"{base + each * boxes} - {given} = {total}."
    answer = {"role": "assistant", "content": f"{total} books."}
    if index % 2:
        answer = {"role": "assistant", "content": f"<think>\n{trace}\n</think>\n\n{total} books."}
    else:
        answer["reasoning_content"] = trace
    return {"messages": [{"role": "user", "content": question}, answer]}


def write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def main() -> None:
    for seed, (split, size) in enumerate(SIZES.items()):
        rng = random.Random(seed)
        write(HERE / f"{split}.jsonl", [conversation(rng, i, split == "eval") for i in range(size)])
    for seed, (split, size) in enumerate(REASONING_SIZES.items()):
        rng = random.Random(100 + seed)
        write(HERE.parent / "demo_reasoning" / f"{split}.jsonl",
              [word_problem(rng, i, split == "eval") for i in range(size)])


if __name__ == "__main__":
    main()
