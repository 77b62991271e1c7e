"""Metrics: every metric of the registry has its computation; values agree with the libraries."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from tasks.core.metrics import METRICS
from tasks.evaluate.answer_metrics import PER_EXAMPLE, rouge_l
from tasks.evaluate.inference import score_model
from tasks.evaluate.score_files import Scores
from tasks.evaluate.scoring import CORPUS, LIKELIHOOD, PREFERENCE, WITH_TOOLS, TaskMetrics

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"


def test_every_registered_metric_has_exactly_one_computation() -> None:
    computed = [*PER_EXAMPLE, *CORPUS, *LIKELIHOOD, *PREFERENCE, *WITH_TOOLS]
    assert sorted(computed) == sorted(METRICS)


def test_rouge_l_from_the_library() -> None:
    assert rouge_l(["Return the number of items."], ["Return the number of items."]) == [1.0]
    assert rouge_l(["completely different words"], ["Return the number of items."]) == [0.0]
    partial = rouge_l(["Return the items."], ["Return the number of items."])[0]
    assert 0.5 < partial < 1.0


def test_task_metrics_and_cost(setup) -> None:
    model, tokenizer, dataset = setup
    scores = score_model.fn(model, tokenizer, dataset, 4, 8, generate=True)
    metrics = TaskMetrics("free_text", {"m": scores}, [{"response": r} for r in dataset["response"]])
    everything = np.arange(len(dataset))
    assert math.isclose(metrics.value("perplexity", "m", everything),
                        math.exp(sum(scores.nll) / sum(scores.target_tokens)), rel_tol=1e-9)
    assert 0.0 <= metrics.value("rouge_l", "m", everything) <= 1.0
    per_token = metrics.per_example_score("m", "perplexity")  # higher is better: mean log-likelihood per token
    assert per_token.shape == (len(dataset),) and (per_token < 0).all()
    assert metrics.per_example_score("m", "rouge_l").tolist() == rouge_l(scores.predictions, list(dataset["response"]))
    assert scores.cost()["prompt_tokens_per_example"] == pytest.approx(np.mean(dataset["prompt_length"]), abs=0.05)


def test_preference_compares_mean_log_likelihood_per_token_not_totals() -> None:
    """Pair 0: the chosen answer is more likely per token although its total is lower (it is longer); pair 1: the
    rejected one is more likely."""
    scores = Scores(nll=[4.0, 3.0], target_tokens=[8, 3], rejected_nll=[2.0, 1.0], rejected_tokens=[2, 2],
                    prompt_tokens=[5, 5], predictions=["a", "b"])
    metrics = TaskMetrics("free_text+preference", {"m": scores}, [{"response": "a"}, {"response": "c"}])
    assert metrics.names == ["loss", "perplexity", "rouge_l", "preference_accuracy", "preference_margin"]
    both = np.arange(2)
    assert metrics.value("preference_accuracy", "m", both) == 0.5
    assert metrics.value("preference_margin", "m", both) == pytest.approx(((-0.5 + 1.0) + (-1.0 + 0.5)) / 2)
    assert metrics.per_example_score("m", "preference_accuracy").tolist() == [1.0, 0.0]
    assert metrics.value("rouge_l", "m", both) == 0.5  # generations are scored against the chosen answers


def test_label_and_translation_metrics_come_from_libraries() -> None:
    refs = ["positive", "negative", "positive", "neutral"]
    preds = ["Positive.", "negative", "negative", "neutral"]
    scores = {"m": Scores(nll=[1.0] * 4, target_tokens=[1] * 4, prompt_tokens=[3] * 4, predictions=preds)}
    labels = TaskMetrics("classification", scores, [{"response": r} for r in refs])
    everything = np.arange(4)
    assert labels.value("exact_match", "m", everything) == 0.5  # "Positive." is not an exact match
    assert labels.value("accuracy", "m", everything) == 0.75  # but it is the right label
    assert labels.value("macro_f1", "m", everything) == pytest.approx(
        f1_score(["positive", "negative", "positive", "neutral"], ["positive", "negative", "negative", "neutral"],
                 average="macro"))
    translation = TaskMetrics("translation", {"m": Scores(nll=[1.0], target_tokens=[1], prompt_tokens=[1],
                                                          predictions=["the cat sat on the mat"])},
                              [{"response": "the cat sat on the mat"}])
    assert translation.value("chrf", "m", np.arange(1)) == pytest.approx(100.0)
    assert translation.value("bleu", "m", np.arange(1)) == pytest.approx(100.0)
