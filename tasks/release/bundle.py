"""A promoted specialist is a bundle: what its approach needs to answer exactly as it was evaluated.

`approach.json` names the approach and holds its prompt recipe (tasks/evaluate/prompting.py: the system prompt, the
few-shot examples, how many training examples retrieval puts in context) and the generation settings evaluation
used. The folder also holds the adapter (or full model) when the approach has one, at its top level as before, and
for retrieval `retrieval_index/`: the index and the training conversations it points at. `tailor serve` builds every
request's conversation with `Prompter.conversation`, which calls the same functions evaluation called; the promote
stage's parity check (tasks/release/serving.py: `served_answers`) proves it on held-out rows before the bundle ships.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.core.errors import UserError
from tasks.data.tokenization import asked, with_examples
from tasks.evaluate.prompting import Recipe, retrieve, shown
from tasks.formats.registry import CONVERSATION

BUNDLE_FILE = "approach.json"
RETRIEVAL_DIR = "retrieval_index"  # the index, and train.parquet: the conversations its rows point at


@dataclass(frozen=True)
class Bundle:
    approach: str
    recipe: Recipe
    max_new_tokens: int  # evaluation's: what a request that sets no max_tokens gets
    model: str  # "adapter" (or a full model) in the folder, or "base": the base model as it is

    def write(self, folder: Path) -> None:
        record = {"approach": self.approach, "model": self.model, "max_new_tokens": self.max_new_tokens,
                  **asdict(self.recipe)}
        (folder / BUNDLE_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, folder: Path) -> Bundle | None:
        """The folder's bundle; None for a folder without one (an adapter promoted by an older tailor, or one
        served with --model), which is served with the client's messages as they are."""
        path = folder / BUNDLE_FILE
        if not path.is_file():
            return None
        try:
            record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            examples = tuple(tuple(e) if isinstance(e, list) else e for e in record["examples"])
            recipe = Recipe(record["system_prompt"], examples, int(record["retrieval_k"]))
            return cls(record["approach"], recipe, int(record["max_new_tokens"]), record["model"])
        except (ValueError, KeyError, TypeError) as error:
            raise UserError(f"{path} is not a bundle tailor can read ({error!r}); promote again") from None


def stage_bundle(folder: Path, bundle: Bundle, model_dir: Path | None, index_dir: Path | None = None,
                 train_file: Path | None = None) -> None:
    """Write the bundle into a new folder: the approach's model files, approach.json and, for retrieval, the index
    with the training conversations (train_file's) it points at."""
    if model_dir is not None:
        shutil.copytree(model_dir, folder)
    else:
        folder.mkdir(parents=True)
    if bundle.recipe.retrieval_k:
        assert index_dir is not None and train_file is not None, "a retrieval bundle needs its index and data"
        shutil.copytree(index_dir, folder / RETRIEVAL_DIR)
        pd.read_parquet(train_file, columns=["messages"]).to_parquet(folder / RETRIEVAL_DIR / "train.parquet")
    bundle.write(folder)


class Prompter:
    """A bundle loaded for serving: each request's conversation, built as evaluation built the approach's prompts."""

    def __init__(self, folder: Path, bundle: Bundle) -> None:
        self.folder, self.bundle = folder, bundle
        self.train = (pd.read_parquet(folder / RETRIEVAL_DIR / "train.parquet") if bundle.recipe.retrieval_k
                      else pd.DataFrame())

    def conversation(self, turns: list[dict[str, str]]) -> list[dict[str, str]]:
        recipe = self.bundle.recipe
        # .fn: the function itself, not a Prefect task run per request.
        nearest = (retrieve.fn(self.folder / RETRIEVAL_DIR, [asked(turns)], recipe.retrieval_k)
                   if recipe.retrieval_k else [])
        context = shown(recipe, self.train, nearest, 1, CONVERSATION)
        return with_examples(turns, recipe.system_prompt, context[0] if context else ())
