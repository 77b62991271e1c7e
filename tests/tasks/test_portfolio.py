"""The portfolio's cross-evaluation on made-up scores: the best approach per task, ties settled by serving cost,
the multi-task model against the specialists, cross-task forgetting, the report and the heatmap."""

from __future__ import annotations

from pathlib import Path

from tasks.evaluate.portfolio import Column, column_record, plot_heatmap, portfolio_record, render_portfolio
from tasks.evaluate.score_files import ScoreFile, Scores

REFERENCES = ["os", "logging", "os", "zipfile"] * 10


def answers(correct: int) -> Scores:
    """The first `correct` of the 40 examples answered right, the rest with a wrong label."""
    predictions = REFERENCES[:correct] + ["socket"] * (len(REFERENCES) - correct)
    return Scores(nll=[1.0] * 40, target_tokens=[1] * 40, prompt_tokens=[20] * 40, predictions=predictions)


def column(name: str, scores: dict[str, int]) -> Column:
    examples = [{"prompt": f"q{i}", "response": r} for i, r in enumerate(REFERENCES)]
    return Column(name, "accuracy", ScoreFile("classification", examples, {a: answers(c) for a, c in scores.items()}),
                  majority_label="os")


TRAINED = {"specialist:a": 1000, "specialist:b": 900, "multitask": 1500, "finetuned+retrieval": 1000}


def test_ties_go_to_the_cheapest_approach_and_the_multitask_model_is_compared_with_the_specialist() -> None:
    record = column_record(column("a", {"specialist:a": 40, "specialist:b": 0, "multitask": 39, "finetuned+retrieval": 40,
                                        "generalist": 8, "prompted": 10, "retrieval": 12}),
                           TRAINED, 0.05, samples=300, confidence=0.95, seed=0)
    assert record["best"] in ("specialist:a", "finetuned+retrieval")
    assert set(record["tied_with_best"]) == {"specialist:a", "finetuned+retrieval", "multitask"}
    assert record["recommended"] == "multitask"  # one adapter for every task, statistically tied with the best
    costs = record["costs"]["multitask"]
    assert (costs["adapters"], costs["training_tokens"], costs["prompt_tokens_per_example"]) == (1, 1500, 20.0)
    assert record["costs"]["generalist"]["adapters"] == 0
    assert not record["multitask_vs_specialist"]["better"] and not record["multitask_vs_specialist"]["worse"]
    assert record["forgetting"]["specialist:b"]["worse"]  # b's specialist answers a's task worse than the base model
    assert record["scores"]["majority_class"]["value"] == 0.5
    assert record["majority_class"]["recommended_vs_majority"]["better"]


def test_the_portfolio_recommends_one_multitask_model_only_where_it_ties_everywhere(tmp_path: Path) -> None:
    ties = {"specialist:a": 40, "specialist:b": 30, "multitask": 39, "finetuned+retrieval": 40, "generalist": 8,
            "prompted": 10, "retrieval": 12}
    b_scores = {**ties, "specialist:b": 40, "specialist:a": 20}
    columns = {"a": column_record(column("a", ties), TRAINED, 0.05, 300, 0.95, 0),
               "b": column_record(column("b", b_scores), TRAINED, 0.05, 300, 0.95, 0)}
    promotions = {"a": {"promoted": True, "reason": "all gates passed"},
                  "b": {"promoted": False, "reason": "failed: forgetting"}}
    forgetting = {"specialist:a": {"base_perplexity": 20.0, "finetuned_perplexity": 40.0, "relative_increase": 1.0},
                  "multitask": {"base_perplexity": 20.0, "finetuned_perplexity": 22.0, "relative_increase": 0.1}}
    record = portfolio_record(columns, promotions, forgetting, 0.25)
    assert [record["forgetting"][a]["within_limit"] for a in forgetting] == [False, True]
    assert record["recommendation"]["multitask_everywhere"] and record["recommendation"]["adapters_to_serve"] == 1
    assert record["recommendation"]["multitask_passes_gates_for"] == ["a", "b"]  # 39/40 right against 12/40
    assert record["recommendation"]["portfolio"].startswith("serve the multi-task model for all 2 tasks")
    report = render_portfolio(record, 0.95)
    assert "| specialist:a | **1 [1, 1]** |" in report and "- b: not promoted (failed: forgetting)" in report
    assert "| b | a |" in report  # b's specialist on a's task, in the forgetting table
    assert "| specialist:a | 40 | +100.0% | **no** |" in report and "| multitask | 22 | +10.0% | yes |" in report
    plot_heatmap(record, str(tmp_path / "heatmap.png"))
    assert (tmp_path / "heatmap.png").stat().st_size > 5_000

    columns["b"] = column_record(column("b", {**b_scores, "multitask": 10}), TRAINED, 0.05, 300, 0.95, 0)
    record = portfolio_record(columns, promotions, forgetting, 0.25)
    assert not record["recommendation"]["multitask_everywhere"]
    assert record["recommendation"]["multitask_passes_gates_for"] == ["a"]
    assert record["recommendation"]["per_task"]["b"] in ("specialist:b", "finetuned+retrieval")
    assert record["recommendation"]["portfolio"].endswith("trails the best approach on b")
