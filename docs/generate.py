"""Writes the two generated pages of the docs, so that they cannot drift from what they describe:

- docs/reference.md: every params.yaml key, from the schema (tasks/core/params.py): type or choices, default, and what
  it does (the field's description, else params.yaml's comment on that line); promote.metric's choices per task
  come from the metric registry (tasks/core/metrics.py).
- docs/errors.md: the error catalogue, from the test corpora of bad data files (tests/data/bad_data) and broken
  params (tests/data/bad_params): what each mistake looks like and what the error names.

`make docs` runs it; tests/test_docs.py fails when a committed page differs from what it writes.
Run from the repository root: python -m docs.generate
"""

from __future__ import annotations

import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from tasks.core.metrics import METRICS, task_metrics
from tasks.core.params import PARAMS_FILE, Params

DOCS = Path("docs")
REFERENCE = DOCS / "reference.md"
ERRORS = DOCS / "errors.md"
CORPUS = Path("tests/data")
TASKS = ("free_text", "summarization", "translation", "classification")


def yaml_comments(path: Path = PARAMS_FILE) -> dict[str, str]:
    """Dotted key -> the comment on its line in params.yaml, with the comment-only lines that continue it."""
    comments: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    last = None
    for line in path.read_text(encoding="utf-8").splitlines():
        key = re.match(r"^(\s*)([A-Za-z_][\w]*):(.*)$", line)
        if key:
            indent = len(key[1])
            stack = [(i, k) for i, k in stack if i < indent] + [(indent, key[2])]
            comment = key[3].split(" # ", 1)[1] if " # " in key[3] else ""
            if comment.startswith("  ") and last:  # indented: it continues the comment of the line above
                comments[last] += " " + comment.strip()
                comment = ""
            last = ".".join(k for _, k in stack)
            comments[last] = comment.strip()
        elif line.strip().startswith("#") and last and line.startswith(" " * 20):
            comments[last] = (comments[last] + " " + line.strip().lstrip("#").strip()).strip()
        elif not line.strip().startswith("#"):
            last = None
    return comments


def type_name(annotation: Any) -> str:
    """A field's type as a reader would write it: choices for a Literal, `a or b` for a union."""
    origin = get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{choice}`" for choice in get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(arg) for arg in get_args(annotation))
    if origin in (list, dict):
        return f"{origin.__name__} of " + ", ".join(type_name(arg) for arg in get_args(annotation))
    if annotation is type(None):
        return "null"
    return {"Path": "file path", "str": "text", "int": "integer", "float": "number", "bool": "true/false"}.get(
        getattr(annotation, "__name__", str(annotation)), getattr(annotation, "__name__", str(annotation)))


def default_text(field: Any) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return ""
    return f"`{json.dumps(value, default=str)}`"


def cell(text: str) -> str:
    """Text for a table cell: a | would end the cell."""
    return text.replace("|", "\\|")


def field_rows(model: type[BaseModel], prefix: str, comments: dict[str, str]) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        nested = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) \
            else None
        if nested is not None:
            rows += field_rows(nested, key + ".", comments)
            continue
        what = field.description or comments.get(key, "")
        if key == "promote.metric":
            what += "; by task: " + "; ".join(f"{task}: {', '.join(task_metrics(task))}" for task in TASKS) + \
                f"; data.format text: {', '.join(task_metrics('text'))}; preference data adds " + \
                ", ".join(m for m in METRICS if "preference" in METRICS[m].tasks)
        rows.append(f"| `{key}` | {type_name(field.annotation)} | {default_text(field)} | {cell(what)} |")
    return rows


def reference() -> str:
    comments = yaml_comments()
    lines = ["# Configuration reference", "",
             "Every key of `params.yaml`, generated from the schema (`tasks/core/params.py`) by `make docs`; the value "
             "params.yaml ships with is the default unless the key is required. `tailor check` validates a file "
             "against it. A specialization of the portfolio (`specializations.<name>`) sets any of the `data`, "
             "`validate`, `tokenize`, `finetune`, `baselines`, `evaluate` and `promote` keys over the top-level ones.",
             "", "## base_model", "",
             "One of three sources, chosen by `source`:", ""]
    base_union = get_args(get_args(Params.model_fields["base_model"].annotation)[0]) or get_args(
        Params.model_fields["base_model"].annotation)
    for source_model in base_union:
        source = get_args(source_model.model_fields["source"].annotation)[0]
        lines += [f"### source: {source}", "", f"{(source_model.__doc__ or '').strip()}", "",
                  "| key | type | default | what it does |", "|---|---|---|---|"]
        lines += [row for row in field_rows(source_model, "base_model.", comments)]
        lines.append("")
    for name, field in Params.model_fields.items():
        key = field.alias or name
        if key == "base_model":
            continue
        annotation = field.annotation
        lines += [f"## {key}", ""]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation.__doc__ and not annotation.__doc__.startswith(annotation.__name__ + "("):
                lines += [" ".join(annotation.__doc__.split()), ""]
            lines += ["| key | type | default | what it does |", "|---|---|---|---|"]
            lines += field_rows(annotation, key + ".", comments)
        else:
            lines += [f"{type_name(annotation)}, default {default_text(field)}: "
                      f"{field.description or comments.get(key, '')}"]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def errors() -> str:
    data_cases = json.loads((CORPUS / "bad_data" / "cases.json").read_text(encoding="utf-8"))
    params_cases = yaml.safe_load((CORPUS / "bad_params" / "cases.yaml").read_text(encoding="utf-8"))
    lines = ["# Error catalogue", "",
             "What tailor says for the mistakes people make, generated by `make docs` from the test corpora that "
             "check each message (`tests/data/bad_data`, `tests/data/bad_params`). Every error is one `tailor: …` "
             "message, exit code 2, and leaves the last good outputs in place.", "",
             "## Data files (the `validate` stage)", "",
             "Each file of `tests/data/bad_data` is given as training data; the message names the file, the line "
             "or row, and, for a failed expectation, example rows. The full report is "
             "`reports/data_docs/index.html`.", "",
             "| the file | the message contains |", "|---|---|"]
    lines += [f"| `{name}` | `{case['expect']}` |" for name, case in sorted(data_cases.items())]
    lines += ["", "## params.yaml (`tailor check`, and every stage before it starts)", "",
              "Each case changes one key of the shipped `params.yaml`.", "",
              "| the change | the message contains |", "|---|---|"]
    for case in params_cases:
        if "rename" in case:
            change = f"`{case['rename']}` misspelled as `{case['set'].split('.')[-1]}`"
        elif case.get("remove"):
            change = f"`{case['set']}` left out"
        else:
            change = f"`{case['set']}: {json.dumps(case['value'])}`"
        lines.append(f"| {change} | `{case['expect'].replace('|', '/')}` |")
    return "\n".join(lines) + "\n"


def pages() -> dict[Path, str]:
    return {REFERENCE: reference(), ERRORS: errors()}


if __name__ == "__main__":
    for path, text in pages().items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
