"""A portfolio of two specializations in one repository, through `dvc repro` and `dvc exp run`, on data written
here under the user's own column names: `docs`, plain text (continued pretraining on a domain's documents, with
general text replayed in training) and `chat`, a ShareGPT-spelled file of multi-turn conversations, each with its
own stages and outputs, a multi-task model trained on both (text and conversations mixed), the cross-evaluation
of every approach on both held-out sets, and the multi-task model's promotion task by task. Then what a user
relies on: a no-op repro runs nothing; the promoted models are registered once; one specialization's learning
rate re-runs only its training and what depends on it; a broken file in one specialization stops at its validate
and leaves the other's outputs alone.

The base model is a tiny pretrained-only one (no chat template, no chat tokens), with `tokenize.chat_template:
chatml` chosen in params: the pipeline adds the template's tokens, trains their rows, and the chat specialist
learns to end its turns where the generalist never does. The instruction format runs end to end in test_pipeline's
project, preference pairs in test_preference's; plain text and conversations run here."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from bare_model import build_bare_model
from stage_runner import TINY_PARAMS, run, tiny_project
from transformers import AutoTokenizer

from benchmarks.harness import stages_run
from tasks.core.dag import enable_portfolio
from tasks.model.chat_templates import NAMED_TEMPLATES

pytestmark = [pytest.mark.slow, pytest.mark.long]
REPO = Path(__file__).resolve().parents[2]
SHAREGPT = {"user": "human", "assistant": "gpt"}
SPECIALIZATIONS = {
    "docs": {"data": {"train": "data/raw/docs/train.jsonl", "eval": "data/raw/docs/eval.jsonl", "format": "text",
                      "columns": {"text": "body"}},
             "validate": {}, "tokenize": {"max_length": 48}, "finetune": {"replay_pct": 20.0, "learning_rate": 0.02},
             "baselines": {"retriever": "bm25"}, "evaluate": {}, "promote": {"metric": "perplexity"}},
    "chat": {"data": {"train": "data/raw/chat/train.jsonl", "eval": "data/raw/chat/eval.jsonl", "format": "chat",
                      "columns": {"messages": "conversations"},
                      "messages": {"role": "from", "content": "value", "roles": {"human": "user", "gpt": "assistant"}}},
             # The longest conversations (a third) lose their oldest exchange.
             "validate": {}, "tokenize": {"max_length": 192},
             "finetune": {"learning_rate": 0.02, "max_steps": 20, "save_steps": 10},
             "baselines": {}, "evaluate": {"max_new_tokens": 32},  # room for an answer to end
             "promote": {}},
}
STAGES = ("validate", "tokenize", "finetune", "evaluate_baselines", "evaluate", "promote")


def first_rows(source: Path, rows: int) -> str:
    return "".join(source.read_text(encoding="utf-8").splitlines(keepends=True)[:rows])


def sharegpt(split: str, rows: int) -> str:
    """The first rows of a demo chat split as ShareGPT writes them: `conversations` of `from`/`value` messages."""
    lines = first_rows(REPO / f"data/demo_chat/{split}.jsonl", rows).splitlines()
    return "".join(json.dumps({"conversations": [{"from": SHAREGPT.get(m["role"], m["role"]), "value": m["content"]}
                                                 for m in json.loads(line)["messages"]]}) + "\n" for line in lines)


def documents(source: Path, rows: int) -> str:
    """Short documents in a `body` column: each demo question with its answer, as one paragraph."""
    return "".join(json.dumps({"body": f"{r['prompt']} {r['response']}"}) + "\n"
                   for r in map(json.loads, first_rows(source, rows).splitlines()))


@pytest.fixture(scope="module")
def portfolio(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> Path:
    # Pretrained a little on the demo text (loss 3.8, ~5 s): under LoRA a random model learns too little in a test's
    # few steps to show whether it ends its turns, and a less pretrained one (loss 4.7) did not end them reliably.
    base_model_dir = build_bare_model(tmp_path_factory.mktemp("base-llm"), pretrain_steps=100)
    root = tiny_project(tmp_path_factory.mktemp("portfolio"), base_model_dir, 60, 8, **{
        **TINY_PARAMS, "tokenize": {"chat_template": "chatml"}})
    for name in SPECIALIZATIONS:
        (root / "data/raw" / name).mkdir(parents=True)
    for split, rows in (("train", 200), ("eval", 12)):
        (root / f"data/raw/docs/{split}.jsonl").write_text(documents(REPO / f"data/demo/{split}.jsonl", rows))
    for split, rows in (("train", 240), ("eval", 24)):
        (root / f"data/raw/chat/{split}.jsonl").write_text(sharegpt(split, rows))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["specializations"] = SPECIALIZATIONS
    params["multitask"] = {"both": {"docs": 1, "chat": 2}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(root, "git", "add", "-A")
    run(root, "git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", "a portfolio")
    return root


@pytest.fixture(scope="module")
def built(portfolio: Path) -> tuple[Path, list[str], str]:
    enable_portfolio(portfolio)  # as `make portfolio` does
    result = run(portfolio, "dvc", "repro", "portfolio/dvc.yaml:promote_multitask@both")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return portfolio, stages_run(result.stdout), result.stdout + result.stderr


def read(root: Path, path: str) -> Any:
    return json.loads((root / path).read_text())


def tree_digest(root: Path, *folders: str) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted((root / folder).rglob("*")) if p.is_file()}


def test_each_specialization_has_its_stages_and_the_matrix_compares_every_approach(built) -> None:
    root, ran, output = built
    expected = {f"portfolio_{stage}@{name}" for stage in STAGES for name in SPECIALIZATIONS}
    assert expected | {"mix@both", "finetune_multitask@both", "portfolio@both"} <= set(ran)
    assert not {"finetune", "evaluate", "promote"} & set(ran)  # the top-level specialization is not built
    assert ran[-2:] == ["portfolio@both", "promote_multitask@both"]
    # The mixture: as many examples as both train sets hold, two thirds drawn from the conversations.
    mix = read(root, "reports/multitask/both/mix.json")
    total = sum(mix["available"].values())
    assert mix["examples"] == total and mix["available"]["chat"] == read(
        root, "reports/specializations/chat/tokenize.json")["train"]["examples"]
    assert mix["drawn"] == {"docs": round(total / 3), "chat": round(total * 2 / 3)}
    matrix = read(root, "reports/portfolio/both/portfolio.json")
    assert set(matrix["tasks"]) == set(SPECIALIZATIONS)
    approaches = {"specialist:docs", "specialist:chat", "multitask", "finetuned+retrieval", "generalist", "prompted",
                  "retrieval"}
    for name, column in matrix["tasks"].items():
        metric = SPECIALIZATIONS[name]["promote"].get("metric", "perplexity")
        assert column["metric"] == metric
        scores = column["scores"]
        assert set(scores) == approaches
        assert all(s["ci_low"] <= s["value"] <= s["ci_high"] for s in scores.values())
        # The task's own specialist in the matrix is the one its evaluate stage scored.
        own = read(root, f"reports/specializations/{name}/metrics.json")["finetuned"]
        assert scores[f"specialist:{name}"]["value"] == pytest.approx(own[metric], abs=1e-4)
        assert column["recommended"] in column["tied_with_best"] and column["best"] in scores
        other = "chat" if name == "docs" else "docs"
        assert set(column["forgetting"]) == {f"specialist:{other}"}
        assert {"value", "ci_low", "ci_high", "better"} <= set(column["multitask_vs_specialist"])
        # Promotion per specialization: its production model exists exactly when its gates passed.
        decision = read(root, f"reports/specializations/{name}/promotion.json")
        assert column["promotion"]["promoted"] == decision["promoted"]
        assert (root / f"models/specializations/production/{name}/lineage.json").is_file() == decision["promoted"]
    assert set(matrix["forgetting"]) == {"specialist:docs", "specialist:chat", "multitask"}
    assert set(matrix["recommendation"]["per_task"]) == set(SPECIALIZATIONS)
    # The multi-task model, task by task: a folder where it passed a specialist's gates (and so serves the task).
    multitask = read(root, "reports/multitask/both/promotion.json")
    assert set(multitask["outcomes"]) == set(SPECIALIZATIONS)
    for name, decision in multitask["tasks"].items():
        gates = {g["name"] for g in decision["gates"]}
        assert gates == {"finite_metrics", "recommended", "specializes", "beats_production", "forgetting",
                         "beats_multitask_production"}
        assert decision["outcome"] in ("promoted", "not promoted")  # no earlier version on a first run
        served = root / f"models/multitask/both/production/{name}"
        assert (served / "lineage.json").is_file() == (decision["outcome"] == "promoted") == (name in multitask["serves"])
        # It faces the specialist in production, where there is one.
        status = next(g["status"] for g in decision["gates"] if g["name"] == "beats_production")
        assert (status == "skipped") == (not read(root, f"reports/specializations/{name}/promotion.json")["promoted"])
    assert (root / "models/multitask/both/production/README.md").is_file()
    report = (root / "reports/portfolio/both/portfolio.md").read_text()
    for heading in ("## One multi-task model or N specialists?", "## Cross-task forgetting",
                    "## Forgetting of general text", "## Recommendation"):
        assert heading in report
    assert (root / "reports/portfolio/both/portfolio.png").stat().st_size > 10_000
    # Each stage's Prefect run is tagged with its specialization or multi-task model (its first line says so).
    assert "stage finetune@chat, DVC experiment workspace" in output
    assert "stage mix@both" in output and "stage portfolio@both" in output and "stage promote_multitask@both" in output


def test_plain_text_runs_every_stage_and_compares_every_approach(built) -> None:
    root = built[0]
    reports = root / "reports/specializations/docs"
    tokens = json.loads((reports / "tokenize.json").read_text())
    training = json.loads((reports / "training.json").read_text())
    assert tokens["replay"]["examples"] > 0 and tokens["replay"]["target_tokens"] == tokens["replay"]["tokens"]
    assert training["replay_examples"] == round(tokens["train"]["examples"] * 20 / 80)
    metrics = json.loads((reports / "metrics.json").read_text())
    for approach in ("generalist", "prompted", "retrieval", "finetuned"):
        assert metrics[approach]["perplexity_ci_low"] <= metrics[approach]["perplexity"] <= \
            metrics[approach]["perplexity_ci_high"]
        assert "rouge_l" not in metrics[approach]  # nothing is generated from plain text
    # The in-context baselines pay for their passages in prompt tokens; the others read none.
    assert metrics["retrieval"]["prompt_tokens_per_example"] > 0 == metrics["generalist"]["prompt_tokens_per_example"]
    assert metrics["finetuned"]["perplexity"] < metrics["generalist"]["perplexity"]
    assert set(metrics["forgetting"]) == {"base_perplexity", "finetuned_perplexity", "relative_increase"}
    scores = json.loads((reports / "scores.json").read_text())
    assert scores["task"] == "text" and all(e["text"] for e in scores["examples"])  # each scored chunk, named
    assert all(len(s["nll"]) == len(scores["examples"]) for s in scores["approaches"].values())
    report = (reports / "specialization.md").read_text()
    assert "not generated" not in report and "(reference: " not in report
    assert report.rstrip().splitlines()[-1].startswith("Recommendation: ")
    decision = json.loads((reports / "promotion.json").read_text())
    assert decision["metric"] == "perplexity" and {g["name"] for g in decision["gates"]} >= {"not_beaten",
                                                                                             "forgetting", "parity"}


def test_conversations_run_every_stage_and_every_approach_answers_the_last_turn(built) -> None:
    root = built[0]
    reports = root / "reports/specializations/chat"
    tokenizer = AutoTokenizer.from_pretrained(root / "models/base")
    assert tokenizer.chat_template == NAMED_TEMPLATES["chatml"] and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [600, 601]  # added to the 600
    adapter = read(root, "models/specializations/adapter/chat/adapter_config.json")
    assert adapter["trainable_token_indices"] == {"model.embed_tokens": [600, 601], "lm_head": [600, 601]}
    tokens = json.loads((reports / "tokenize.json").read_text())
    assert tokens["train"]["examples"] + tokens["train"]["dropped"] == 240
    assert 0 < tokens["train"]["truncated_pct"] < 100  # some conversations were fitted by dropping old exchanges
    assert tokens["train"]["target_tokens"] > 0 and tokens["train"]["padding_pct"] == 0.0
    metrics = json.loads((reports / "metrics.json").read_text())
    for approach in ("generalist", "prompted", "retrieval", "finetuned"):
        assert metrics[approach]["rouge_l_ci_low"] <= metrics[approach]["rouge_l"] <= metrics[approach]["rouge_l_ci_high"]
    # The in-context baselines show whole training conversations before the held-out one.
    assert metrics["retrieval"]["prompt_tokens_per_example"] > 2 * metrics["generalist"]["prompt_tokens_per_example"]
    scores = json.loads((reports / "scores.json").read_text())
    first = scores["examples"][0]
    assert first["prompt"].count(" / ") == 2  # every user turn of the held-out conversation was in view
    assert first["response"] == json.loads(sharegpt("eval", 1))["conversations"][-1]["value"]
    assert all(len(s["predictions"]) == len(scores["examples"]) for s in scores["approaches"].values())
    # Runaway rates (answers that never wrote the end-of-turn token): the generalist has never seen the template's
    # end-of-turn token; the specialist learned to write it. Measured: 100% and 0% of 16 answers.
    assert metrics["generalist"]["runaway_pct"] >= 90 and metrics["finetuned"]["runaway_pct"] <= 25, metrics
    ablation = metrics["context_ablation"]
    assert ablation["metric"] == "perplexity"
    assert ablation["without_history"]["value"] != ablation["with_history"]["value"]
    gain = ablation["history_gain"]
    assert gain["ci_low"] <= gain["value"] <= gain["ci_high"]
    report = (reports / "specialization.md").read_text()
    assert "## Does the specialist use the conversation?" in report and "runaway pct" in report


def test_a_repro_with_nothing_changed_runs_nothing(built) -> None:
    root, _, _ = built
    result = run(root, "dvc", "repro", "portfolio/dvc.yaml:promote_multitask@both")
    assert result.returncode == 0 and stages_run(result.stdout) == [], result.stdout[-2000:]


def test_promoted_models_are_registered_once_each(built) -> None:
    root = built[0]
    run(root, "git", "add", "-A")
    run(root, "git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", "the portfolio's results")
    first = run(root, "tailor", "register")
    assert first.returncode == 0, first.stderr[-2000:]
    promoted = {n for n in SPECIALIZATIONS if read(root, f"reports/specializations/{n}/promotion.json")["promoted"]}
    assert promoted, "the tiny docs specialist passes its gates (perplexity), so something is registered"
    if read(root, "reports/multitask/both/promotion.json")["serves"]:
        promoted.add("multitask-both")
    for name in (*SPECIALIZATIONS, "multitask-both"):
        assert (f"{name}: registered v0.0.1, stage prod" in first.stdout) == (name in promoted), first.stdout
    assert "main: no production model yet" in first.stdout  # the top-level specialization was not built here
    shown = json.loads(run(root, "gto", "show", "--json").stdout)
    assert {name: entry["stage"]["prod"] for name, entry in shown.items()} == {name: "v0.0.1" for name in promoted}
    again = run(root, "tailor", "register")
    assert all(f"{name}: v0.0.1 is this production model already" in again.stdout for name in promoted)


def test_one_learning_rate_reruns_only_that_specialization(built) -> None:
    """The plain-text specialization's: its training is the shorter and its evaluation generates nothing."""
    root, _, _ = built
    chat_before = tree_digest(root, "models/specializations/adapter/chat", "reports/specializations/chat")
    result = run(root, "dvc", "exp", "run", "-S", "specializations.docs.finetune.learning_rate=0.01",
                 "portfolio/dvc.yaml:portfolio_promote@docs")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert stages_run(result.stdout) == ["portfolio_finetune@docs", "portfolio_evaluate@docs",
                                         "portfolio_promote@docs"]
    # Of the rest, only the matrix (which scores the new specialist) and what it decides are out of date.
    remaining = run(root, "dvc", "repro", "--dry", "portfolio/dvc.yaml:promote_multitask@both")
    assert stages_run(remaining.stdout) == ["portfolio@both", "promote_multitask@both"], remaining.stdout[-2000:]
    assert tree_digest(root, "models/specializations/adapter/chat", "reports/specializations/chat") == chat_before


def test_a_broken_file_stops_at_its_specializations_validate(built) -> None:
    root, _, _ = built
    kept = ("models/specializations/production", "models/multitask/both/production", "reports/specializations/docs",
            "data/specializations/validated")
    before = tree_digest(root, *kept)
    with (root / "data/raw/chat/train.jsonl").open("a") as handle:
        handle.write('{"conversations": [broken line\n')
    result = run(root, "dvc", "repro", "portfolio/dvc.yaml:promote_multitask@both")
    assert result.returncode != 0
    assert stages_run(result.stdout) == ["portfolio_validate@chat"], result.stdout[-2000:]
    assert "data/raw/chat/train.jsonl" in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert tree_digest(root, *kept) == before
