"""Promotion gates and publishing: each gate can fail on its own; a swap is all or nothing."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import pandas as pd
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from tasks.core.atomic_dir import restore_interrupted, write_dir_atomically
from tasks.core.params import PromoteParams
from tasks.evaluate.prompting import Recipe
from tasks.evaluate.score_files import ScoreFile, Scores
from tasks.release.bundle import Bundle, Prompter, stage_bundle
from tasks.release.promotion import (
    EVAL_SCORES,
    Expected,
    Gate,
    candidate_of,
    decision_record,
    hold_production_place,
    parity_gate,
    production_gate,
    promotion_gates,
    publish_production,
)
from tasks.release.serving import ServedAnswer

NO_PRODUCTION = Gate("beats_production", None, 0.05, "skipped", "no production model yet")


def metrics(tuned_rouge: float = 0.40, forgetting: float = 0.02,
            tied: tuple[str, ...] = ("finetuned",)) -> dict:
    """An evaluate-stage metrics file: the generalist at ROUGE-L 0.15, retrieval at 0.30, the fine-tuned model the
    best, with the decision (`tied`: those the best does not beat; the last is recommended)."""
    return {
        "generalist": {"rouge_l": 0.15, "perplexity": 40.0},
        "retrieval": {"rouge_l": 0.30, "perplexity": 8.0},
        "finetuned": {"rouge_l": tuned_rouge, "perplexity": 9.0, "training_tokens": 30000},
        "forgetting": {"relative_increase": forgetting},
        "decision": {"metric": "rouge_l", "best": "finetuned", "runner_up": "retrieval", "tied_with_best": list(tied),
                     "recommended": tied[-1]},
        "recommendation": "Recommendation: **finetuned** is best for this data.",
    }


def failed(decision: dict) -> list[str]:
    return [g["name"] for g in decision["gates"] if not g["passed"]]


def gates_of(candidate: dict, approach: str = "finetuned", params: PromoteParams | None = None) -> dict:
    return decision_record(promotion_gates(candidate, params or PromoteParams(), approach, NO_PRODUCTION),
                           "rouge_l", approach, "test")


def test_good_candidate_passes_every_gate_but_parity_which_the_stage_adds() -> None:
    decision = gates_of(metrics())
    assert decision["promoted"] and decision["reason"] == "all gates passed" and decision["approach"] == "finetuned"
    assert [g["name"] for g in decision["gates"]] == ["finite_metrics", "not_beaten", "specializes",
                                                      "beats_production", "forgetting"]
    production = next(g for g in decision["gates"] if g["name"] == "beats_production")
    assert production["status"] == "skipped" and production["detail"] == "no production model yet"


@pytest.mark.parametrize(("approach", "candidate", "gate"), [
    ("finetuned", metrics(forgetting=0.40), "forgetting"),
    ("retrieval", metrics(), "not_beaten"),  # named in params while the fine-tuned model beats it
    ("generalist", metrics(tied=("finetuned", "generalist")), "specializes"),  # nothing to ship
])
def test_each_gate_fails_on_its_own(approach: str, candidate: dict, gate: str) -> None:
    decision = gates_of(candidate, approach)
    assert not decision["promoted"] and failed(decision) == [gate]
    assert decision["reason"] == f"failed: {gate}; production left unchanged"


def test_an_approach_on_the_base_weights_faces_no_forgetting_gate() -> None:
    gates = {g["name"]: g for g in gates_of(metrics(forgetting=0.9, tied=("finetuned", "retrieval")),
                                             "retrieval")["gates"]}
    assert gates["forgetting"]["status"] == "skipped" and gates["not_beaten"]["status"] == "pass"
    assert "tied with the best (finetuned)" in gates["not_beaten"]["detail"]
    assert "the best approach (finetuned) beats the generalist" in gates["specializes"]["detail"]


def test_an_approach_named_in_params_where_nothing_beats_the_generalist_is_shipped_and_said_so() -> None:
    everything_tied = metrics(tied=("finetuned", "retrieval", "generalist"))
    gates = {g["name"]: g for g in gates_of(everything_tied, "retrieval")["gates"]}
    assert gates["specializes"]["status"] == "pass" and "no approach measurably beats" in gates["specializes"]["detail"]


def test_the_candidate_is_the_recommendation_unless_params_name_one() -> None:
    tied = metrics(tied=("finetuned", "retrieval"))
    assert candidate_of(tied, PromoteParams()) == "retrieval"
    assert candidate_of(tied, PromoteParams(approach="finetuned")) == "finetuned"


def test_nan_metric_blocks_promotion() -> None:
    broken = metrics()
    broken["finetuned"]["perplexity"] = math.nan
    assert failed(gates_of(broken)) == ["finite_metrics"]


def test_parity_names_the_first_example_that_serving_answers_otherwise() -> None:
    expected = [Expected(3, [1, 2, 3], "Paris", True), Expected(7, [1, 2, 4], "Rome", True)]
    same = [ServedAnswer([1, 2, 3], " Paris", True), ServedAnswer([1, 2, 4], "Rome", True)]
    assert parity_gate(expected, same).status == "pass"
    other_prompt = parity_gate(expected, [same[0], ServedAnswer([1, 9, 4, 5], "Rome", True)])
    assert other_prompt.status == "fail" and other_prompt.value == 7
    assert other_prompt.detail.startswith("held-out example 7: the served prompt differs from the evaluated one "
                                          "from token 1 on (4 tokens served, 3 evaluated)")
    other_answer = parity_gate(expected, [ServedAnswer([1, 2, 3], "Lyon", True), same[1]])
    assert other_answer.value == 3 and "served 'Lyon' (stopped) where evaluation answered 'Paris'" in other_answer.detail
    runaway = parity_gate(expected, [ServedAnswer([1, 2, 3], "Paris", False), same[1]])
    assert runaway.status == "fail" and "ran to max tokens" in runaway.detail


def scored(rouge_like: list[str], references: list[str]) -> Scores:
    return Scores(nll=[1.0] * len(references), target_tokens=[1] * len(references),
                  prompt_tokens=[10] * len(references), predictions=rouge_like, generated_tokens=5)


def test_candidate_worse_than_production_is_refused(tmp_path: Path) -> None:
    references = [f"Return the item number {i} of the list." for i in range(30)]
    examples = [{"prompt": f"q{i}", "response": r} for i, r in enumerate(references)]
    production = tmp_path / "production"
    production.mkdir()
    ScoreFile("free_text", examples, {"finetuned": scored(references, references)}).write(production / EVAL_SCORES)
    worse = ScoreFile("free_text", examples, {"finetuned": scored(["Something else entirely."] * 30, references)})
    gate = production_gate(worse, production, PromoteParams(), 200, 0.95, 0)
    assert gate.status == "fail" and "vs production" in gate.detail
    better = ScoreFile("free_text", examples, {"finetuned": scored(references, references)})
    assert production_gate(better, production, PromoteParams(), 200, 0.95, 0).status == "fail"  # equal is not better
    other_examples = ScoreFile("free_text", examples[:-1], better.approaches)
    assert production_gate(other_examples, production, PromoteParams(), 200, 0.95, 0).status == "skipped"
    # A production model promoted by an older tailor kept its scores in another shape: not comparable, said so.
    (production / EVAL_SCORES).write_text(json.dumps({"task": "free_text", "examples": examples, "scores": {}}))
    assert "older tailor" in production_gate(better, production, PromoteParams(), 200, 0.95, 0).detail


ADAPTER_BUNDLE = Bundle("finetuned", Recipe(None), 48, "adapter")


def test_publish_writes_the_bundle_card_lineage_scores_and_tokenizer(tmp_path: Path, tiny_model_dir: Path) -> None:
    candidate = tmp_path / "adapter"
    candidate.mkdir()
    (candidate / "adapter_model.safetensors").write_bytes(b"weights")
    stage_bundle(tmp_path / "staged", ADAPTER_BUNDLE, candidate)
    lineage = {"metrics": metrics(), "inputs": {"models/adapter": "abc"}, "params": {}}
    gates = promotion_gates(metrics(), PromoteParams(), "finetuned", NO_PRODUCTION)
    out = publish_production.fn(tmp_path / "staged", ADAPTER_BUNDLE, tiny_model_dir, tmp_path / "production",
                                lineage, gates, False, ScoreFile("free_text", [], {}))
    assert (out / "adapter_model.safetensors").read_bytes() == b"weights"
    assert Bundle.read(out) == ADAPTER_BUNDLE
    assert (out / "tokenizer.json").is_file() and (out / EVAL_SCORES).is_file()
    assert json.loads((out / "lineage.json").read_text())["inputs"] == {"models/adapter": "abc"}
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft") and "| rouge_l | 0.15 | 0.3 | 0.4 |" in card
    assert "the **finetuned** approach, the base model" in card and "with this folder's adapter" in card


def test_a_retrieval_bundle_carries_its_index_and_the_rows_it_points_at(tmp_path: Path, tiny_model_dir: Path) -> None:
    index, train = tmp_path / "index", tmp_path / "train.parquet"
    index.mkdir()
    (index / "index.json").write_text('{"retriever": "bm25", "documents": 3}')
    (index / "bm25_corpus.json").write_text('[["paris"], ["rome"], ["berlin"]]')
    conversations = [[{"role": "user", "content": f"{city}?"}, {"role": "assistant", "content": country}]
                     for city, country in (("paris", "France"), ("rome", "Italy"), ("berlin", "Germany"))]
    pd.DataFrame({"messages": [json.dumps(c) for c in conversations], "other": [1, 2, 3]}).to_parquet(train)
    bundle = Bundle("retrieval", Recipe("Name the country.", retrieval_k=1), 16, "base")
    stage_bundle(tmp_path / "staged", bundle, None, index, train)
    out = publish_production.fn(tmp_path / "staged", bundle, tiny_model_dir, tmp_path / "production",
                                {"metrics": metrics(), "inputs": {}, "params": {}},
                                promotion_gates(metrics(tied=("finetuned", "retrieval")), PromoteParams(),
                                                "retrieval", NO_PRODUCTION), False, ScoreFile("free_text", [], {}))
    assert not (out / "tokenizer.json").exists() and not (out / "adapter_config.json").exists()
    assert list(pd.read_parquet(out / "retrieval_index/train.parquet").columns) == ["messages"]
    assert "its weights unchanged" in (out / "README.md").read_text()
    # What serving builds for a request: the bundle's system prompt, the nearest training exchange, the question.
    asked = [{"role": "user", "content": "rome?"}]
    assert Prompter(out, Bundle.read(out)).conversation(asked) == [  # type: ignore[arg-type]
        {"role": "system", "content": "Name the country."}, {"role": "user", "content": "rome?"},
        {"role": "assistant", "content": "Italy"}, *asked]


def test_failed_write_leaves_the_old_version(tmp_path: Path) -> None:
    target = tmp_path / "production"
    write_dir_atomically(target, lambda d: (d.mkdir(), (d / "model").write_text("v1")))

    def crash(staging: Path) -> None:
        staging.mkdir()
        (staging / "model").write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_dir_atomically(target, crash)
    assert (target / "model").read_text() == "v1"
    write_dir_atomically(target, lambda d: (d.mkdir(), (d / "model").write_text("v2")))
    assert (target / "model").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["production"]


def test_swap_cut_between_renames_is_restored(tmp_path: Path) -> None:
    target = tmp_path / "production"
    old = tmp_path / "production.old"
    old.mkdir()
    (old / "model").write_text("v1")
    restore_interrupted(target)
    assert (target / "model").read_text() == "v1" and not old.exists()


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root by relative path, with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# The lines of promotion and of the atomic swap; a kill inside a library call (a half-copied file) leaves the
# same state as a kill at the next of these lines.
WATCHED = {publish_production.fn.__code__.co_filename, write_dir_atomically.__code__.co_filename}


def publish_in_child(kill_at_line: int | None, publish: Callable[[], object]) -> int:
    """Run publish in a forked process, SIGKILLed at its kill_at_line-th executed line of WATCHED code (None:
    never); returns the number of those lines the child ran, or -1 when it was killed."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: trace, publish, report how many lines ran
        os.close(read_end)
        executed = 0

        def count_lines(frame: FrameType, event: str, arg: object) -> Callable[..., object] | None:
            nonlocal executed
            if event == "line":
                executed += 1
                if executed == kill_at_line:
                    os.kill(os.getpid(), signal.SIGKILL)
            return count_lines

        sys.settrace(lambda frame, event, arg: count_lines if frame.f_code.co_filename in WATCHED else None)
        publish()
        sys.settrace(None)
        os.write(write_end, str(executed).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as report:
        ran = report.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return -1
    assert os.WEXITSTATUS(status) == 0, "the publish itself failed"
    return int(ran)


def test_promotion_killed_at_any_point_leaves_a_whole_production_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    versions = {}
    for name, seed in (("old", 1), ("new", 2)):
        torch.manual_seed(seed)
        adapter = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                 LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
        adapter.save_pretrained(tmp_path / name)
        versions[name] = tmp_path / name
    production = tmp_path / "models" / "production"
    gates = promotion_gates(metrics(), PromoteParams(), "finetuned", NO_PRODUCTION)
    for name in versions:
        stage_bundle(tmp_path / f"staged-{name}", ADAPTER_BUNDLE, versions[name])

    def publish(version: str) -> Callable[[], object]:
        return lambda: publish_production.fn(tmp_path / f"staged-{version}", ADAPTER_BUNDLE, tiny_model_dir,
                                             production, {"inputs": {"models/adapter": version}, "params": {}, "metrics": metrics()},
                                             gates, False, ScoreFile("free_text", [], {}))

    publish("new")()
    new = tree(production)
    publish("old")()
    old = tree(production)
    lines = publish_in_child(None, publish("new"))
    assert tree(production) == new
    # Kill the promotion at every line it runs (copying, writing the card and lineage, the swap, the clean-up);
    # after each kill production is exactly the old or the new version, never a mix, never missing.
    seen = set()
    for kill_at in range(1, lines + 1):
        publish("old")()
        assert publish_in_child(kill_at, publish("new")) == -1
        state = tree(production)
        assert state in (old, new), f"killed at line {kill_at} of {lines}: production is a mix"
        seen.add("old" if state == old else "new")
    assert seen == {"old", "new"}  # the kills landed both before and after the switch
    publish("new")()  # the next promotion clears what a killed one left behind
    assert tree(production) == new
    assert sorted(p.name for p in production.parent.iterdir()) == ["production"]
    loaded = PeftModel.from_pretrained(model, production)
    assert json.loads((production / "lineage.json").read_text())["inputs"]["models/adapter"] == "new"
    assert loaded.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2, do_sample=False).shape == (1, 5)


def test_rejected_first_candidate_leaves_a_note_where_production_goes(tmp_path: Path) -> None:
    production = tmp_path / "production"
    hold_production_place(production, "failed: beats_best_baseline; production left unchanged")
    assert "failed: beats_best_baseline" in (production / "README.md").read_text()
    gate = production_gate(ScoreFile("free_text", [], {}), production, PromoteParams(), 100, 0.95, 0)
    assert (gate.status, gate.detail) == ("skipped", "no production model yet")
    (production / "README.md").write_text("a real model")
    hold_production_place(production, "failed again")  # an existing production is never touched
    assert (production / "README.md").read_text() == "a real model"
