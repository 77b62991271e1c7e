"""GRPO on the tiny model: the rewards score made-up answers as the task's metrics do, and a short run through the
shared training loop samples groups of answers, logs their rewards and moves the adapter."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from canonical import canonical
from prefect.logging import disable_run_logger
from safetensors.torch import load_file
from transformers import AutoTokenizer

from tasks.core.params import REWARDS, FinetuneParams, GrpoParams, LoraParams
from tasks.data.tokenization import tokenize_split
from tasks.formats.registry import CONVERSATION
from tasks.train.rewards import known_rewards, rewards
from tasks.train.training import save_trained, train

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"


def test_the_schema_offers_exactly_the_registered_rewards() -> None:
    assert tuple(known_rewards([], 0)) == REWARDS


@pytest.mark.parametrize(("name", "completions", "expected"), [
    ("exact_match", ["os", " os ", "OS"], [1.0, 1.0, 0.0]),
    ("accuracy", ["os", "Os.", "sys"], [1.0, 1.0, 0.0]),
    ("rouge_l", ["return the length", "nothing alike"], [pytest.approx(0.75), 0.0]),
    ("chrf", ["os", "xyz"], [1.0, 0.0]),
    ("valid_json", ['{"a": 1}', "{a: 1}"], [1.0, 0.0]),
    ("in_label_set", ["Logging.", "pickle"], [1.0, 0.0]),
])
def test_each_reward_scores_made_up_answers(name: str, completions: list[str], expected: list[float]) -> None:
    references = {"rouge_l": ["return the length of s"] * 2}.get(name, ["os"] * len(completions))
    [function], weights = rewards({name: 0.5}, ["os", "logging"], end_of_turn=2)
    assert function.__name__ == name and weights == [0.5]
    assert function(completions=completions, completion_ids=[[5]] * len(completions), response=references,
                    prompts=[[1]] * len(completions)) == expected


def test_ends_turn_rewards_an_answer_that_stopped_by_itself() -> None:
    [function], _ = rewards({"ends_turn": 1.0}, [], end_of_turn=2)
    assert function(completions=["a", "b", ""], completion_ids=[[7, 2], [7, 7], []]) == [1.0, 0.0, 0.0]


def test_a_short_grpo_run_samples_groups_rewards_them_and_moves_the_adapter(tiny_model_dir: Path,
                                                                             tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    frame = canonical(pd.read_json(DEMO / "train.jsonl", lines=True).head(16))
    prompts = tokenize_split.fn(tokenizer, frame, CONVERSATION, None, 256)
    params = FinetuneParams(method="grpo", learning_rate=5e-3, max_steps=2, batch_size=4, save_steps=1,
                            logging_steps=1, lora=LoraParams(r=4, alpha=8, dropout=0.0),
                            grpo=GrpoParams(generations=4, max_completion_length=8,
                                            rewards={"rouge_l": 1.0, "ends_turn": 0.5}))
    with disable_run_logger():
        trainer, summary = train(tiny_model_dir, prompts, params, 7, torch.device("cpu"), tmp_path / "checkpoints",
                                 tmp_path / "live")
    assert summary["steps"] == 2
    assert 0 <= summary["train_reward_mean"] <= 1.5 and summary["train_reward_std"] >= 0
    assert 0 < summary["train_completion_length"] <= 8 and 0 <= summary["train_clipped_ratio"] <= 1
    logged = [entry for entry in trainer.state.log_history if "rewards/rouge_l/mean" in entry]
    assert len(logged) == 2 and "rewards/ends_turn/mean" in logged[0]
    save_trained(trainer, tmp_path / "adapter")
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert any(name.endswith("lora_B.weight") and weights[name].abs().sum() > 0 for name in weights)
