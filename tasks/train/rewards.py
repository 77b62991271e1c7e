"""The rewards GRPO trains on (finetune.grpo.rewards names them, with weights): the task's own per-answer metrics,
computed by the same code evaluation uses, and format checks. Each is a TRL reward function: the batch's
completions (text, and token ids), the dataset's other columns (`response`, the reference) as keyword arguments,
one float per completion."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import sacrebleu

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


def rewards(weights: dict[str, float], labels: Sequence[str], end_of_turn: int) -> tuple[list[Reward], list[float]]:
    """The reward functions finetune.grpo.rewards names, in its order, and their weights."""
    known = known_rewards(labels, end_of_turn)
    functions = []
    for name in weights:
        function = known[name]
        function.__name__ = name  # TRL logs each reward under its function's name
        functions.append(function)
    return functions, list(weights.values())
