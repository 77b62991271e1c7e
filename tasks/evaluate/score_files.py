"""The scores file: every approach's per-example results on the held-out examples, as the evaluation stages write
them and promotion reads them. Plain data, so that reading it loads no model code."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from tasks.formats.hermes import split_reasoning


@dataclass
class Scores:
    """Per-example results of one model on the eval examples, and their summary."""

    nll: list[float] = field(default_factory=list)  # summed over each example's reference tokens
    target_tokens: list[int] = field(default_factory=list)
    # Preference pairs: the same for the rejected answer (the reference is the chosen one).
    rejected_nll: list[float] = field(default_factory=list)
    rejected_tokens: list[int] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)
    predictions: list[str] = field(default_factory=list)
    ended: list[bool] = field(default_factory=list)  # whether each answer wrote the end-of-turn token in time
    generated_tokens: int = 0

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Scores:
        # A production model's eval_scores.json written by an older tailor may also hold generation_seconds.
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def cost(self) -> dict[str, float]:
        """What the approach costs at inference time, in tokens (the same on every machine, unlike seconds: the
        scores are a DVC output that a re-run must rebuild byte for byte), and the share of its answers that ran
        away (reached max_new_tokens without ending its turn: a model that never learned where its answers stop)."""
        result = {"prompt_tokens_per_example": round(float(np.mean(self.prompt_tokens)), 1)}
        if self.predictions:
            result["generated_tokens_per_example"] = round(self.generated_tokens / len(self.predictions), 1)
        if self.ended:
            result["runaway_pct"] = round(100 * (1 - float(np.mean(self.ended))), 1)
        traces = [split_reasoning(prediction)[0] for prediction in self.predictions]
        if any(traces):  # reasoning traces are not scored (the answer after them is): their length is a cost
            result["reasoning_words_per_example"] = round(float(np.mean([len((t or "").split()) for t in traces])), 1)
        return result


@dataclass
class ScoreFile:
    """Every approach's per-example scores on the same examples: reports/baselines.json, reports/scores.json and
    the production model's eval_scores.json are this one record, written and read here."""

    task: str
    examples: list[dict[str, str]]  # what each score is about: prompt and response, or the text scored
    approaches: dict[str, Scores]

    def as_dict(self) -> dict[str, Any]:
        return {"task": self.task, "examples": self.examples,
                "approaches": {a: asdict(s) for a, s in self.approaches.items()}}

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> ScoreFile:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return cls(raw["task"], raw["examples"], {a: Scores.from_dict(s) for a, s in raw["approaches"].items()})

    def references(self) -> list[str]:
        return [e.get("response", "") for e in self.examples]
