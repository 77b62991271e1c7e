"""The rewards GRPO trains on (finetune.grpo.rewards names them, with weights): the task's own per-answer metrics,
computed by the same code evaluation uses, format checks, and the user's own functions in
finetune.grpo.reward_module. Each is a TRL reward function: the batch's completions (text, and token ids), the
dataset's other columns (`response`, the reference) as keyword arguments, one float per completion."""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import sacrebleu

from tasks.core.errors import UserError
from tasks.core.params import REWARDS, GrpoParams
from tasks.evaluate.answer_metrics import PER_EXAMPLE, normalize_label

Reward = Callable[..., list[float]]


def metric_reward(metric: Callable[[list[str], list[str]], list[float]]) -> Reward:
    def reward(completions: list[str], response: list[str], **_: Any) -> list[float]:
        return metric(list(completions), list(response))

    return reward


def chrf_reward(completions: list[str], response: list[str], **_: Any) -> list[float]:
    """chrF of each answer on its own, from 0 to 1 (evaluation reports it over the whole set, from 0 to 100)."""
    return [sacrebleu.sentence_chrf(c, [r]).score / 100 for c, r in zip(completions, response)]


def valid_json_reward(completions: list[str], **_: Any) -> list[float]:
    def parses(text: str) -> bool:
        try:
            json.loads(text)
        except ValueError:
            return False
        return True

    return [float(parses(c)) for c in completions]


def label_set_reward(labels: Sequence[str]) -> Reward:
    """1 for an answer that is one of the training set's answers (its labels, for classification), after the
    normalization the accuracy metric applies."""
    known = {normalize_label(label) for label in labels}

    def reward(completions: list[str], **_: Any) -> list[float]:
        return [float(normalize_label(c) in known) for c in completions]

    return reward


def ends_turn_reward(end_of_turn: int) -> Reward:
    """1 for an answer that ended with the end-of-turn token: one cut at max_completion_length never stops when
    served."""
    def reward(completions: list[str], completion_ids: list[list[int]], **_: Any) -> list[float]:
        return [float(bool(ids) and ids[-1] == end_of_turn) for ids in completion_ids]

    return reward


def known_rewards(labels: Sequence[str], end_of_turn: int) -> dict[str, Reward]:
    """Every reward by its name in params (tasks/core/params.py's REWARDS lists the names; a test holds them equal)."""
    return {
        **{name: metric_reward(metric) for name, metric in PER_EXAMPLE.items()},
        "chrf": chrf_reward,
        "valid_json": valid_json_reward,
        "in_label_set": label_set_reward(labels),
        "ends_turn": ends_turn_reward(end_of_turn),
    }


def module_rewards(module: Path, names: list[str]) -> dict[str, Reward]:
    """The functions `names` of the user's reward module, each checked on every call (a reward that raises or
    returns something else than one number per answer stops training with a message naming it)."""
    if not names:
        return {}
    wanted = f"finetune.grpo.rewards names {', '.join(names)}, which are not built in ({', '.join(REWARDS)})"
    if not module.is_file():
        raise UserError(f"finetune.grpo.reward_module: {module} not found; {wanted}: define them in that file, or "
                        "point reward_module at the file that does")
    spec = importlib.util.spec_from_file_location(f"tailor_rewards_{module.stem}", module)
    assert spec is not None and spec.loader is not None  # a .py path always has a source loader
    loaded = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(loaded)
    except Exception as error:  # the user's code: any failure is theirs to fix, named with its cause
        raise UserError(f"finetune.grpo.reward_module {module} failed to import: {type(error).__name__}: "
                        f"{error}") from error
    missing = [name for name in names if not callable(getattr(loaded, name, None))]
    if missing:
        defined = [name for name, value in vars(loaded).items() if callable(value) and not name.startswith("_")
                   and getattr(value, "__module__", None) == loaded.__name__]
        raise UserError(f"{wanted}; {module} has no function {', '.join(missing)} (it defines: "
                        f"{', '.join(defined) or 'none'})")
    return {name: checked(name, module, getattr(loaded, name)) for name in names}


def checked(name: str, module: Path, function: Reward) -> Reward:
    def reward(**batch: Any) -> list[float]:
        try:
            values = list(function(**batch))
        except Exception as error:  # the user's code
            raise UserError(f"reward {name} ({module}) raised {type(error).__name__}: {error}") from error
        if len(values) != len(batch["completions"]) or not all(
                isinstance(value, (int, float)) and math.isfinite(value) for value in values):
            raise UserError(f"reward {name} ({module}) must return one finite number per answer: "
                            f"{len(batch['completions'])} answers, it returned {str(values)[:200]}")
        return [float(value) for value in values]

    return reward


def rewards(grpo: GrpoParams, labels: Sequence[str], end_of_turn: int) -> tuple[list[Reward], list[float]]:
    """The reward functions finetune.grpo.rewards names, in its order, and their weights."""
    found = {**module_rewards(grpo.reward_module, grpo.custom_rewards()), **known_rewards(labels, end_of_turn)}
    return [named(name, found[name]) for name in grpo.rewards], list(grpo.rewards.values())


def named(name: str, function: Reward) -> Reward:
    """The reward under its name in params: TRL logs each reward under its function's name (a wrapper, so that
    the user's function and the built-in ones keep theirs)."""
    def reward(**batch: Any) -> list[float]:
        return function(**batch)

    reward.__name__ = name
    return reward


def try_rewards(functions: list[Reward], completions: list[str], completion_ids: list[list[int]],
                references: list[str]) -> None:
    """Call each reward once on the given answers, before training starts: a custom reward that fails then
    fails in seconds, not after the model has loaded and sampled a batch."""
    for function in functions:
        function(prompts=[[0]] * len(completions), completions=completions, completion_ids=completion_ids,
                 response=references)
