"""Your own GRPO rewards (finetune.method grpo). finetune.grpo.rewards names any function of this file beside the
built-in rewards, with its weight, e.g. {accuracy: 1.0, brevity: 0.2}; finetune.grpo.reward_module names the file
(this one by default). The finetune stage depends on it: edit a reward and `dvc repro` trains again.

A reward takes the batch's generated answers as keyword arguments and returns one number per answer:
  completions     the answers' text
  completion_ids  their token ids (the end-of-turn token last when the answer stopped by itself)
  response        the reference answers of the held-out-style rows being trained on
It is called once on a few reference answers before training starts, so a reward that raises stops the stage at once.
"""

from __future__ import annotations

from typing import Any


def mentions_reference(completions: list[str], response: list[str], **_: Any) -> list[float]:
    """1 for an answer that contains its reference anywhere (case aside): partial credit that a model which answers
    in sentences earns long before it answers with the exact label. It can be gamed (an answer naming every label
    earns it on every prompt): docs/grpo.md measures GRPO doing just that from the base model, and how to avoid it."""
    return [float(reference.strip().lower() in answer.lower()) for answer, reference in zip(completions, response)]


def brevity(completions: list[str], response: list[str], **_: Any) -> list[float]:
    """1 for an answer no longer than its reference, falling to 0 at twice its length: it discourages padding an
    answer out to the completion limit when the metric alone would not."""
    return [max(0.0, min(1.0, 2 - len(answer) / max(len(reference), 1)))
            for answer, reference in zip(completions, response)]
