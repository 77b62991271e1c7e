"""Every data format the README offers runs end to end through `dvc repro` on data written here, under the user's
own column names. The instruction format is test_pipeline's project, conversations test_chat's, preference pairs
test_preference's; this module runs plain text (continued pretraining on a domain's documents): every stage, the
in-context baselines, general text replayed in training (finetune.replay_pct), forgetting and a promotion decision,
on a base model whose tokenizer has no chat template (plain text needs none)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from bare_model import build_bare_model
from stage_runner import TINY_PARAMS, run, set_params, tiny_project, use_raw_data
from transformers import AutoTokenizer

from benchmarks.harness import stages_run

pytestmark = pytest.mark.slow
DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"


def documents(split: str, rows: int) -> str:
    """Short documents in a `body` column: each demo question with its answer, as one paragraph."""
    lines = (DEMO / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[:rows]
    return "".join(json.dumps({"body": f"{r['prompt']} {r['response']}"}) + "\n" for r in map(json.loads, lines))


@pytest.fixture(scope="module")
def text_project(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> Path:
    base_model_dir = build_bare_model(tmp_path_factory.mktemp("base-llm"))
    # Continued pretraining with a fifth of general text replayed against forgetting, as it is usually run.
    root = tiny_project(tmp_path_factory.mktemp("text"), base_model_dir, 0, 0,
                        **{**TINY_PARAMS, "tokenize": {"max_length": 48},
                           "finetune": {**TINY_PARAMS["finetune"], "replay_pct": 20.0}})
    use_raw_data(root, documents("train", 200), documents("eval", 12), format="text", columns={"text": "body"})
    set_params(root, "promote", metric="perplexity")
    set_params(root, "baselines", retriever="bm25")  # the other retriever end to end (the first build uses minilm)
    return root


def test_plain_text_runs_every_stage_and_compares_every_approach(text_project: Path) -> None:
    result = run(text_project, "dvc", "repro")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(stages_run(result.stdout)) == sorted(yaml.safe_load((text_project / "dvc.yaml").read_text())["stages"])
    tokenizer = AutoTokenizer.from_pretrained(text_project / "models/base")  # no template needed, none added
    assert tokenizer.chat_template is None and len(tokenizer) == 600 and tokenizer.eos_token == "<|endoftext|>"
    tokens = json.loads((text_project / "reports/tokenize.json").read_text())
    training = json.loads((text_project / "reports/training.json").read_text())
    assert tokens["replay"]["examples"] > 0 and tokens["replay"]["target_tokens"] == tokens["replay"]["tokens"]
    assert training["replay_examples"] == round(tokens["train"]["examples"] * 20 / 80)
    metrics = json.loads((text_project / "reports/metrics.json").read_text())
    for approach in ("generalist", "prompted", "retrieval", "finetuned"):
        assert metrics[approach]["perplexity_ci_low"] <= metrics[approach]["perplexity"] <= \
            metrics[approach]["perplexity_ci_high"]
        assert "rouge_l" not in metrics[approach]  # nothing is generated from plain text
    # The in-context baselines pay for their passages in prompt tokens; the others read none.
    assert metrics["retrieval"]["prompt_tokens_per_example"] > 0 == metrics["generalist"]["prompt_tokens_per_example"]
    assert metrics["finetuned"]["perplexity"] < metrics["generalist"]["perplexity"]
    assert set(metrics["forgetting"]) == {"base_perplexity", "finetuned_perplexity", "relative_increase"}
    scores = json.loads((text_project / "reports/scores.json").read_text())
    assert scores["task"] == "text" and all(e["text"] for e in scores["examples"])  # each scored chunk, named
    assert all(len(s["nll"]) == len(scores["examples"]) for s in scores["approaches"].values())
    report = (text_project / "reports/specialization.md").read_text()
    assert "not generated" not in report and "(reference: " not in report
    assert report.rstrip().splitlines()[-1].startswith("Recommendation: ")
    decision = json.loads((text_project / "reports/promotion.json").read_text())
    assert decision["metric"] == "perplexity" and {g["name"] for g in decision["gates"]} >= {"beats_best_baseline",
                                                                                             "forgetting"}
    production = text_project / "models/production"
    assert (production / "lineage.json").is_file() == decision["promoted"]
