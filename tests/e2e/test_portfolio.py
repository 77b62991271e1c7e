"""A portfolio of two specializations in one repository, through `dvc repro` and `dvc exp run`, on data written
here under the user's own column names: `docs`, plain text (continued pretraining on a domain's documents, with
general text replayed in training, the BM25 retriever) and `labels` (the demo portfolio's classifier), each with its
own stages and outputs, a multi-task model trained on both (text and instructions mixed), and the cross-evaluation
of every approach on both held-out sets. Then what a user relies on: a no-op repro runs nothing; one
specialization's learning rate re-runs only its training and what depends on it; a broken file in one
specialization stops at its validate and leaves the other's outputs alone.

The instruction format runs end to end in test_pipeline's project, conversations in test_chat's, preference pairs
in test_preference's; plain text runs here."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from stage_runner import TINY_PARAMS, run, tiny_project

from benchmarks.harness import stages_run

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
LABELS = ["asyncio", "datetime", "decimal", "logging", "os", "socket", "tarfile", "zipfile"]
SPECIALIZATIONS = {
    "docs": {"data": {"train": "data/raw/docs/train.jsonl", "eval": "data/raw/docs/eval.jsonl", "format": "text",
                      "columns": {"text": "body"}},
             "validate": {}, "tokenize": {"max_length": 48}, "finetune": {"replay_pct": 20.0},
             "baselines": {"retriever": "bm25"}, "evaluate": {}, "promote": {"metric": "perplexity"}},
    "labels": {"data": {"train": "data/raw/labels/train.jsonl", "eval": "data/raw/labels/eval.jsonl"},
               "validate": {"allowed_responses": LABELS}, "tokenize": {}, "finetune": {"learning_rate": 0.02},
               # BM25 here too: the MiniLM retriever runs in test_pipeline's project, and loading it costs seconds
               # in each of this module's retrieval stages.
               "baselines": {"system_prompt": "Answer with the module the described callable belongs to.",
                             "retriever": "bm25"},
               "evaluate": {"task": "classification", "max_new_tokens": 4}, "promote": {"metric": "macro_f1"}},
}
STAGES = ("validate", "tokenize", "finetune", "evaluate_baselines", "evaluate", "promote")


def first_rows(source: Path, rows: int) -> str:
    return "".join(source.read_text(encoding="utf-8").splitlines(keepends=True)[:rows])


def documents(source: Path, rows: int) -> str:
    """Short documents in a `body` column: each demo question with its answer, as one paragraph."""
    return "".join(json.dumps({"body": f"{r['prompt']} {r['response']}"}) + "\n"
                   for r in map(json.loads, first_rows(source, rows).splitlines()))


@pytest.fixture(scope="module")
def portfolio(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, prefect_api: str) -> Path:
    # The top-level data (the replayed text is tokenized with it) kept small: the portfolio is what runs here.
    root = tiny_project(tmp_path_factory.mktemp("portfolio"), tiny_model_dir, 60, 8, **TINY_PARAMS)
    for name in SPECIALIZATIONS:
        (root / "data/raw" / name).mkdir(parents=True)
    for split, rows in (("train", 200), ("eval", 12)):
        (root / f"data/raw/docs/{split}.jsonl").write_text(documents(REPO / f"data/demo/{split}.jsonl", rows))
    for split, rows in (("train", 120), ("eval", 16)):
        (root / f"data/raw/labels/{split}.jsonl").write_text(
            first_rows(REPO / f"data/portfolio/classification/{split}.jsonl", rows))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["specializations"] = SPECIALIZATIONS
    params["multitask"] = {"both": {"docs": 1, "labels": 2}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(root, "git", "add", "-A")
    run(root, "git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", "a portfolio")
    return root


@pytest.fixture(scope="module")
def built(portfolio: Path) -> tuple[Path, list[str], str]:
    result = run(portfolio, "dvc", "repro", "portfolio@both")
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
    assert ran.index("portfolio@both") == len(ran) - 1
    # The mixture: as many examples as both train sets hold, two thirds drawn from labels.
    mix = read(root, "reports/multitask/both/mix.json")
    total = sum(mix["available"].values())
    assert mix["examples"] == total and mix["available"]["labels"] == 120
    assert mix["drawn"] == {"docs": round(total / 3), "labels": round(total * 2 / 3)}
    matrix = read(root, "reports/portfolio/both/portfolio.json")
    assert set(matrix["tasks"]) == set(SPECIALIZATIONS)
    approaches = {"specialist:docs", "specialist:labels", "multitask", "finetuned+retrieval", "generalist", "prompted",
                  "retrieval"}
    for name, column in matrix["tasks"].items():
        metric = SPECIALIZATIONS[name]["promote"].get("metric", "perplexity")
        assert column["metric"] == metric
        scores = column["scores"]
        assert set(scores) == approaches | ({"majority_class"} if name == "labels" else set())
        assert all(s["ci_low"] <= s["value"] <= s["ci_high"] for s in scores.values())
        # The task's own specialist in the matrix is the one its evaluate stage scored.
        own = read(root, f"reports/specializations/{name}/metrics.json")["finetuned"]
        assert scores[f"specialist:{name}"]["value"] == pytest.approx(own[metric], abs=1e-4)
        assert column["recommended"] in column["tied_with_best"] and column["best"] in scores
        other = "labels" if name == "docs" else "docs"
        assert set(column["forgetting"]) == {f"specialist:{other}"}
        assert {"value", "ci_low", "ci_high", "better"} <= set(column["multitask_vs_specialist"])
        # Promotion per specialization: its production model exists exactly when its gates passed.
        decision = read(root, f"reports/specializations/{name}/promotion.json")
        assert column["promotion"]["promoted"] == decision["promoted"]
        assert (root / f"models/specializations/production/{name}/lineage.json").is_file() == decision["promoted"]
    assert "majority_class" in matrix["tasks"]["labels"]
    assert set(matrix["forgetting"]) == {"specialist:docs", "specialist:labels", "multitask"}
    assert set(matrix["recommendation"]["per_task"]) == set(SPECIALIZATIONS)
    report = (root / "reports/portfolio/both/portfolio.md").read_text()
    for heading in ("## One multi-task model or N specialists?", "## Cross-task forgetting",
                    "## Forgetting of general text", "## Recommendation"):
        assert heading in report
    assert (root / "reports/portfolio/both/portfolio.png").stat().st_size > 10_000
    # Each stage's Prefect run is tagged with its specialization or multi-task model (its first line says so).
    assert "stage finetune@labels, DVC experiment workspace" in output
    assert "stage mix@both" in output and "stage portfolio@both" in output


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
    assert decision["metric"] == "perplexity" and {g["name"] for g in decision["gates"]} >= {"beats_best_baseline",
                                                                                             "forgetting"}


def test_a_repro_with_nothing_changed_runs_nothing(built) -> None:
    root, _, _ = built
    result = run(root, "dvc", "repro", "portfolio@both")
    assert result.returncode == 0 and stages_run(result.stdout) == [], result.stdout[-2000:]


def test_promoted_models_are_registered_once_each(built) -> None:
    root = built[0]
    run(root, "git", "add", "-A")
    run(root, "git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", "the portfolio's results")
    first = run(root, "tailor", "register")
    assert first.returncode == 0, first.stderr[-2000:]
    promoted = {n for n in SPECIALIZATIONS if read(root, f"reports/specializations/{n}/promotion.json")["promoted"]}
    assert promoted, "the tiny docs specialist passes its gates (perplexity), so something is registered"
    for name in SPECIALIZATIONS:
        assert (f"{name}: registered v0.0.1, stage prod" in first.stdout) == (name in promoted), first.stdout
    assert "main: no production model yet" in first.stdout  # the top-level specialization was not built here
    shown = json.loads(run(root, "gto", "show", "--json").stdout)
    assert {name: entry["stage"]["prod"] for name, entry in shown.items()} == {name: "v0.0.1" for name in promoted}
    again = run(root, "tailor", "register")
    assert all(f"{name}: v0.0.1 is this production model already" in again.stdout for name in promoted)


def test_one_learning_rate_reruns_only_that_specialization(built) -> None:
    root, _, _ = built
    docs_before = tree_digest(root, "models/specializations/adapter/docs", "reports/specializations/docs")
    result = run(root, "dvc", "exp", "run", "-S", "specializations.labels.finetune.learning_rate=0.01",
                 "portfolio@both")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(stages_run(result.stdout)) == sorted(["portfolio_finetune@labels", "portfolio_evaluate@labels",
                                                       "portfolio_promote@labels", "portfolio@both"])
    assert tree_digest(root, "models/specializations/adapter/docs", "reports/specializations/docs") == docs_before


def test_a_broken_file_stops_at_its_specializations_validate(built) -> None:
    root, _, _ = built
    kept = ("models/specializations/production", "reports/specializations/docs", "data/specializations/validated")
    before = tree_digest(root, *kept)
    with (root / "data/raw/labels/train.jsonl").open("a") as handle:
        handle.write('{"prompt": "broken line\n')
    result = run(root, "dvc", "repro", "portfolio@both")
    assert result.returncode != 0
    assert stages_run(result.stdout) == ["portfolio_validate@labels"], result.stdout[-2000:]
    assert "data/raw/labels/train.jsonl" in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert tree_digest(root, *kept) == before
