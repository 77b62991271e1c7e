"""The data formats (data.format), each read by a module of its own in tasks/formats/, and the canonical shape the
validate stage writes it in. Every later stage asks only that shape ("conversation, pair or text?"), never the
format: a new format is its module (tasks/formats/format.py says what it provides) and a line here.

Kept free of imports: the params schema reads the names and shapes, and every stage loads the schema.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from tasks.formats.format import Format

# The canonical shapes, as validate writes them (data/validated/<split>.parquet):
CONVERSATION = "conversation"  # `messages`: a JSON list of {"role", "content"}, system/user/assistant
PAIR = "pair"  # a conversation and, in `rejected`, a worse last answer (preference pairs)
TEXT = "text"  # `text`: a passage, every token of it a target
Shape = Literal["conversation", "pair", "text"]


@dataclass(frozen=True)
class Registered:
    module: str  # the module whose FORMAT reads it
    shape: Shape


FORMATS: dict[str, Registered] = {
    "instruction": Registered("tasks.formats.instruction", CONVERSATION),
    "text": Registered("tasks.formats.text", TEXT),
    "chat": Registered("tasks.formats.chat", CONVERSATION),
    "preference": Registered("tasks.formats.preference", PAIR),
    "tools": Registered("tasks.formats.tools", CONVERSATION),  # tool calls and reasoning, as tasks/formats/hermes.py writes them
}


def format_of(name: str) -> Format:
    """The format's reader (imported here, by the validate stage and `tailor check` only)."""
    return importlib.import_module(FORMATS[name].module).FORMAT
