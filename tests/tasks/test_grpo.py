"""GRPO on the tiny model: the rewards score made-up answers as the task's metrics do, and a short run through the
shared training loop samples groups of answers, logs their rewards and moves the adapter."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from canonical import canonical
from prefect.logging import disable_run_logger
from safetensors.torch import load_file
from transformers import AutoTokenizer

from tasks.core.errors import UserError
from tasks.core.params import REWARDS, FinetuneParams, GrpoParams, LoraParams, parse_params
from tasks.data.tokenization import tokenize_split
from tasks.formats.registry import CONVERSATION
from tasks.train.rewards import known_rewards, rewards, try_rewards
from tasks.train.training import save_trained, train

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo"


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
    [function], weights = rewards(GrpoParams(rewards={name: 0.5}), ["os", "logging"], end_of_turn=2)
    assert function.__name__ == name and weights == [0.5]
    assert function(completions=completions, completion_ids=[[5]] * len(completions), response=references,
                    prompts=[[1]] * len(completions)) == expected


def test_ends_turn_rewards_an_answer_that_stopped_by_itself() -> None:
    [function], _ = rewards(GrpoParams(rewards={"ends_turn": 1.0}), [], end_of_turn=2)
    assert function(completions=["a", "b", ""], completion_ids=[[7, 2], [7, 7], []]) == [1.0, 0.0, 0.0]


def test_a_custom_reward_is_a_function_of_the_named_module(tmp_path: Path) -> None:
    shipped = GrpoParams(rewards={"accuracy": 1.0, "brevity": 0.2}, reward_module=REPO / "rewards.py")
    [accuracy, brevity], weights = rewards(shipped, ["os"], end_of_turn=2)
    assert brevity.__name__ == "brevity" and weights == [1.0, 0.2]
    assert brevity(completions=["os", "os os", "os os os"], response=["os"] * 3) == [1.0, 0.0, 0.0]
    assert brevity(completions=["abc", "abcdef"], response=["abcd"] * 2) == [1.0, 0.5]


@pytest.mark.parametrize(("source", "reward", "message"), [
    (None, "brevity", "finetune.grpo.reward_module: {module} not found; finetune.grpo.rewards names brevity, which "
                      "are not built in"),
    ("import no_such_package\n", "brevity", "{module} failed to import: ModuleNotFoundError"),
    ("def brevity(completions, **_):\n    return [1.0] * len(completions)\n", "concise",
     "{module} has no function concise (it defines: brevity)"),
    ("def concise(completions, **_):\n    return [len(c) / 0 for c in completions]\n", "concise",
     "reward concise ({module}) raised ZeroDivisionError: division by zero"),
    ("def concise(completions, **_):\n    return [1.0]\n", "concise",
     "reward concise ({module}) must return one finite number per answer: 2 answers, it returned [1.0]"),
])
def test_a_custom_reward_that_is_missing_or_fails_is_refused_by_name(tmp_path: Path, source: str | None, reward: str,
                                                                      message: str) -> None:
    module = tmp_path / "my_rewards.py"
    if source is not None:
        module.write_text(source)
    with pytest.raises(UserError, match=re.escape(message.format(module=module))):
        functions, _ = rewards(GrpoParams(rewards={reward: 1.0}, reward_module=module), [], end_of_turn=2)
        try_rewards(functions, ["a", "b"], [[1], [2]], ["a", "b"])


def test_rewards_must_be_named_and_measure_the_task(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="name at least one reward"):
        GrpoParams(rewards={})
    with pytest.raises(ValueError, match="each reward's weight is above 0"):
        GrpoParams(rewards={"accuracy": 0})
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["finetune"]["method"] = "grpo"
    raw["finetune"]["grpo"]["rewards"] = {"accuracy": 1.0}
    with pytest.raises(UserError, match="\n  finetune.grpo.rewards: accuracy is not a metric of evaluate.task free_text, "
                                        "so training would optimize what the report does not measure; its metric "
                                        "rewards: rouge_l"):
        parse_params(raw)
    raw["evaluate"]["task"], raw["promote"]["metric"] = "classification", "macro_f1"
    # The portfolio's specializations inherit the top-level rewards: each sets the rewards of its own task.
    assert "specializations.translation.finetune.grpo.rewards: accuracy is not a metric of evaluate.task " \
           "translation" in str(pytest.raises(UserError, parse_params, raw).value)
    for name, metric in (("summarization", "rouge_l"), ("translation", "chrf")):
        raw["specializations"][name]["finetune"] = {"grpo": {"rewards": {metric: 1.0}}}
    assert parse_params(raw).finetune.grpo.rewards == {"accuracy": 1.0}
    raw["specializations"]["classification"]["finetune"] = {"grpo": {"reward_module": "mine.py"}}
    with pytest.raises(UserError, match="specializations.classification.finetune.grpo.reward_module: shared by every "
                                        "specialization"):
        parse_params(raw)


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
