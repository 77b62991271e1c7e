"""Fine-tuning on the tiny model: packing is exact, loss falls, checkpoints resume only when inputs match."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from canonical import canonical
from prefect.logging import disable_run_logger
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorWithFlattening

from tasks.core.errors import UserError
from tasks.core.params import FinetuneParams, LoraParams
from tasks.data.tokenization import tokenize_split
from tasks.formats.registry import CONVERSATION, PAIR, TEXT
from tasks.train.training import (
    COMPLETE_MARKER,
    StopOnNonFiniteLoss,
    halve_batch_on_oom,
    latest_complete_checkpoint,
    prepare_checkpoints,
    save_trained,
    train,
    training_fingerprint,
    with_replay,
)

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"
PARAMS = FinetuneParams(learning_rate=2e-2, max_steps=6, batch_size=8, save_steps=3, logging_steps=1,
                        lora=LoraParams(r=8, alpha=16, dropout=0.0))


@pytest.fixture(scope="module")
def train_set(tiny_model_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    frame = pd.read_json(DEMO / "train.jsonl", lines=True).head(64)
    return tokenize_split.fn(tokenizer, canonical(frame), CONVERSATION, None, 256)


def test_replay_makes_up_its_share_of_the_examples_drawn_the_same_each_run(tiny_model_dir: Path, train_set) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    general = pd.read_json(DEMO.parent / "general" / "replay.jsonl", lines=True).head(5)
    replay = tokenize_split.fn(tokenizer, general, TEXT, None, 128)
    mixed = with_replay(train_set, replay, 20.0, 7)
    assert len(mixed) == 80 and mixed[:64] == train_set[:]  # 16 of 80 rows are replayed text: 20%
    replayed = mixed.select(range(64, 80))["input_ids"]
    assert set(map(tuple, replayed)) <= set(map(tuple, replay["input_ids"]))  # drawn again where 16 > len(replay)
    assert with_replay(train_set, replay, 20.0, 7)["input_ids"] == mixed["input_ids"]


def run_training(tiny_model_dir: Path, train_set, out: Path, params: FinetuneParams = PARAMS):
    with disable_run_logger():
        return train(tiny_model_dir, train_set, params, 7, torch.device("cpu"), out / "checkpoints", out / "live")


def test_packed_batch_matches_separate_sequences(tiny_model_dir: Path, train_set) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    rows = [{"input_ids": train_set[i]["input_ids"]} for i in range(3)]
    packed = DataCollatorWithFlattening(return_position_ids=True)(rows)
    with torch.no_grad():
        logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits[0]
        start = 0
        for row in rows:
            alone = model(input_ids=torch.tensor([row["input_ids"]])).logits[0]
            end = start + len(row["input_ids"])
            torch.testing.assert_close(logits[start:end], alone, atol=1e-4, rtol=1e-4)
            start = end


def test_training_lowers_loss_and_writes_safetensors(tiny_model_dir: Path, train_set, tmp_path: Path) -> None:
    trainer, summary = run_training(tiny_model_dir, train_set, tmp_path)
    losses = pd.read_csv(tmp_path / "live" / "plots" / "metrics" / "loss.tsv", sep="\t")["loss"]
    assert len(losses) == PARAMS.max_steps
    assert losses.iloc[-2:].mean() < losses.iloc[:2].mean()
    assert summary["steps"] == PARAMS.max_steps and summary["timings"]["tokens_per_second"] > 0
    assert summary["tokens_trained"] > 0
    # The curves are a DVC output: nothing the clock measured goes into them (it would change dvc.lock each run).
    curves = [p.relative_to(tmp_path / "live").as_posix() for p in (tmp_path / "live").rglob("*") if p.is_file()]
    assert "plots/metrics/loss.tsv" in curves and not [c for c in curves if "runtime" in c or "per_second" in c]
    assert "runtime" not in (tmp_path / "live" / "metrics.json").read_text()
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    save_trained(trainer, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert sorted(p.suffix for p in (tmp_path / "adapter").iterdir()) == [".json", ".md", ".safetensors"]


def test_resumed_run_matches_uninterrupted_run(tiny_model_dir: Path, train_set, tmp_path: Path) -> None:
    full, _ = run_training(tiny_model_dir, train_set, tmp_path / "full")
    save_trained(full, tmp_path / "full" / "adapter")
    shutil.copytree(tmp_path / "full" / "checkpoints" / "checkpoint-3",
                    tmp_path / "resumed" / "checkpoints" / "checkpoint-3")
    # The curves as a run killed after logging step 6 but before checkpointing it leaves them: the resumed run
    # logs steps 4 to 6 again, and each step must appear once, at its own x.
    shutil.copytree(tmp_path / "full" / "live", tmp_path / "resumed" / "live")
    resumed, summary = run_training(tiny_model_dir, train_set, tmp_path / "resumed")
    save_trained(resumed, tmp_path / "resumed" / "adapter")
    assert summary["steps"] == PARAMS.max_steps
    a = load_file(tmp_path / "full" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
    curves = [pd.read_csv(tmp_path / run / "live" / "plots" / "metrics" / "loss.tsv", sep="\t")
              for run in ("full", "resumed")]
    assert curves[0]["step"].tolist() == curves[1]["step"].tolist() == list(range(1, PARAMS.max_steps + 1))
    assert curves[1]["loss"].tolist() == pytest.approx(curves[0]["loss"].tolist(), rel=1e-4)


def resume_point(checkpoints: Path, fingerprint: str, on_change: str = "restart", max_steps: int = 12) -> Path | None:
    with disable_run_logger():
        prepare_checkpoints(checkpoints, fingerprint, on_change)
        return latest_complete_checkpoint(checkpoints, max_steps)


def test_checkpoints_resume_only_with_the_same_inputs(tmp_path: Path, tiny_model_dir: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    fingerprint = training_fingerprint(PARAMS, 7, [tiny_model_dir])
    assert resume_point(checkpoints, fingerprint) is None
    (checkpoints / "checkpoint-3").mkdir()
    (checkpoints / "checkpoint-3" / COMPLETE_MARKER).touch()
    assert resume_point(checkpoints, fingerprint) == checkpoints / "checkpoint-3"
    changed = training_fingerprint(PARAMS.model_copy(update={"learning_rate": 1e-4}), 7, [tiny_model_dir])
    assert changed != fingerprint
    with pytest.raises(UserError, match="made with other data or params, and finetune.on_input_change is refuse"):
        resume_point(checkpoints, changed, "refuse")
    assert (checkpoints / "checkpoint-3" / COMPLETE_MARKER).is_file()  # refusing keeps them
    assert resume_point(checkpoints, changed) is None
    assert not (checkpoints / "checkpoint-3").exists()


def test_partial_checkpoint_is_skipped_and_removed(tiny_model_dir: Path, train_set, tmp_path: Path) -> None:
    run_training(tiny_model_dir, train_set, tmp_path)
    checkpoints = tmp_path / "checkpoints"
    assert all((c / COMPLETE_MARKER).is_file() for c in checkpoints.glob("checkpoint-*"))
    partial = checkpoints / "checkpoint-9"  # what a kill while saving leaves: files, but no marker
    shutil.copytree(checkpoints / "checkpoint-6", partial)
    (partial / COMPLETE_MARKER).unlink()
    (checkpoints / "fingerprint.json").write_text("same inputs")
    assert resume_point(checkpoints, "same inputs") == checkpoints / "checkpoint-6"
    assert not partial.exists()


def test_a_finished_run_resumes_before_its_last_step(tmp_path: Path, tiny_model_dir: Path, train_set) -> None:
    """Resumed at max_steps, the Trainer would take one step too many; the step before is used instead."""
    run_training(tiny_model_dir, train_set, tmp_path)  # checkpoints 3 and 6 (= max_steps)
    checkpoints = tmp_path / "checkpoints"
    with disable_run_logger():
        assert latest_complete_checkpoint(checkpoints, PARAMS.max_steps) == checkpoints / "checkpoint-3"
    expected = load_file(tmp_path / "checkpoints" / "checkpoint-6" / "adapter_model.safetensors")
    trainer, summary = run_training(tiny_model_dir, train_set, tmp_path)  # a re-run after a kill at the very end
    assert summary["steps"] == PARAMS.max_steps
    assert not (checkpoints / f"checkpoint-{PARAMS.max_steps + 1}").exists()
    save_trained(trainer, tmp_path / "adapter")
    got = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=1e-4)


def test_out_of_memory_halves_the_batch_and_keeps_the_effective_batch() -> None:
    tried: list[tuple[int, int]] = []

    def needs_batch_of_at_most_2(batch: int, accumulation: int) -> str:
        tried.append((batch, accumulation))
        if batch > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "trained"

    with disable_run_logger():
        assert halve_batch_on_oom(needs_batch_of_at_most_2, 8, 2) == "trained"
        assert tried == [(8, 2), (4, 4), (2, 8)]
        tried.clear()
        assert halve_batch_on_oom(needs_batch_of_at_most_2, 6, 1) == "trained"
        assert tried == [(6, 1), (3, 2), (1, 6)]  # an odd batch goes straight to 1: 3 cannot halve evenly
        with pytest.raises(UserError, match="out of memory even at finetune.batch_size 1"):
            halve_batch_on_oom(lambda b, a: needs_batch_of_at_most_2(b * 100, a), 4, 1)


def test_non_finite_loss_stops_training() -> None:
    class State:
        global_step = 12

    with pytest.raises(UserError, match="training loss became nan by step 12; lower finetune.learning_rate"):
        StopOnNonFiniteLoss().on_log(None, State(), None, logs={"loss": float("nan")})
    StopOnNonFiniteLoss().on_log(None, State(), None, logs={"loss": 2.5})


def test_all_linear_targets_every_linear_layer_of_any_architecture(tiny_model_dir: Path) -> None:
    """PEFT's "all-linear" (for models whose module names differ from Llama's): every linear layer but the head."""
    from tasks.train.adapters import with_lora

    model = with_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                      FinetuneParams(lora=LoraParams(target_modules="all-linear")))
    adapted = {name.split(".")[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_dpo_starts_from_an_sft_adapter_which_is_also_its_reference(tiny_model_dir: Path, train_set,
                                                                      tmp_path: Path) -> None:
    """DPO through TRL on the tokenize stage's pairs, from an adapter the pipeline trained: at the first step the
    policy is its reference, so the implicit rewards are exactly zero (against the base model they would not be,
    as the adapter moved away from it); the reference copy TRL adds is not saved with the result; a run resumed
    from a checkpoint ends where the uninterrupted one does."""
    sft, _ = run_training(tiny_model_dir, train_set, tmp_path / "sft")
    save_trained(sft, tmp_path / "sft" / "adapter")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    pairs = tokenize_split.fn(tokenizer, canonical(pd.read_json(DEMO.parent / "demo_preference" / "train.jsonl",
                                                                lines=True).head(32), "preference"), PAIR, None, 128)
    params = PARAMS.model_copy(update={"method": "dpo", "max_steps": 4, "save_steps": 2,
                                       "init_adapter": tmp_path / "sft" / "adapter"})
    trainer, summary = run_training(tiny_model_dir, pairs, tmp_path / "dpo", params)
    first = trainer.state.log_history[0]
    assert first["rewards/chosen"] == 0.0 and first["rewards/rejected"] == 0.0
    assert "train_reward_accuracy" in summary and summary["steps"] == 4 and summary["timings"]["tokens_per_second"] > 0
    save_trained(trainer, tmp_path / "dpo" / "adapter")
    saved = sorted(p.name for p in (tmp_path / "dpo" / "adapter").iterdir())
    assert "ref" not in saved and "adapter_model.safetensors" in saved
    before = load_file(tmp_path / "sft" / "adapter" / "adapter_model.safetensors")
    after = load_file(tmp_path / "dpo" / "adapter" / "adapter_model.safetensors")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)

    shutil.copytree(tmp_path / "dpo" / "checkpoints" / "checkpoint-2",
                    tmp_path / "resumed" / "checkpoints" / "checkpoint-2")
    resumed, summary = run_training(tiny_model_dir, pairs, tmp_path / "resumed", params)
    save_trained(resumed, tmp_path / "resumed" / "adapter")
    assert summary["steps"] == 4
    again = load_file(tmp_path / "resumed" / "adapter" / "adapter_model.safetensors")
    for key in after:
        torch.testing.assert_close(again[key], after[key], atol=1e-5, rtol=1e-4)


def test_dpo_from_an_adapter_that_trains_chat_token_rows_stops_with_the_reason(tmp_path: Path,
                                                                               tiny_model_dir: Path) -> None:
    """TRL's fused LM head bypasses PEFT's trainable token rows, so DPO cannot continue such an adapter: one clear
    message, before any training."""
    from tasks.train.dpo import trainer as preference_trainer

    adapter = tmp_path / "sft"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"trainable_token_indices": {"lm_head": [600, 601]}}')
    params = PARAMS.model_copy(update={"method": "dpo", "init_adapter": adapter})
    with pytest.raises(UserError, match="trains the rows of the chat template's tokens .* method dpo \\(TRL\\) "
                                        "does not train further; start from a base model with its own chat "
                                        "template"):
        preference_trainer(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           AutoTokenizer.from_pretrained(tiny_model_dir), None, None, params, [])
