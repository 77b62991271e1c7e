"""The training methods, by the name finetune.method gives them; params.py's choices are this registry's keys (a
test holds them equal). A new method is a module of its own (tasks/train/sft.py, tasks/train/dpo.py) and a line here."""

from __future__ import annotations

from tasks.core.params import FinetuneParams
from tasks.train import dpo, grpo, sft
from tasks.train.method import Method

METHODS: dict[str, Method] = {"lora": sft.METHOD, "full": sft.METHOD, "dpo": dpo.METHOD, "grpo": grpo.METHOD}


def method_of(params: FinetuneParams) -> Method:
    return METHODS[params.method]
