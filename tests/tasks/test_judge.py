"""The judge of open answers against a local stand-in: both orders cancel its position bias, the win rate comes with
an interval and reaches the report, and the API key is sent but never recorded."""

from __future__ import annotations

import json

import pytest
from judge_stand_in import stand_in_judge

from tasks.core.approaches import FINETUNED
from tasks.core.errors import UserError
from tasks.core.params import JudgeParams
from tasks.evaluate.judge import judged
from tasks.evaluate.reporting import judge_section
from tasks.evaluate.score_files import ScoreFile, Scores

COUNT = 20
EXAMPLES = [{"prompt": f"What does f{i}() do?", "response": f"Return the square root of {i}."} for i in range(COUNT)]


def scores() -> ScoreFile:
    """The fine-tuned model answers like the reference; the generalist does not; prompted does as well as it."""
    references = [e["response"] for e in EXAMPLES]
    return ScoreFile("free_text", EXAMPLES, {
        FINETUNED: Scores(predictions=references),
        "generalist": Scores(predictions=["I do not know."] * COUNT),
        "prompted": Scores(predictions=references),
    })


def test_a_better_answer_wins_and_an_equal_one_ties() -> None:
    with stand_in_judge() as url:
        result = judged(scores(), JudgeParams(url=url, model="stand-in"), 200, 0.95, 0)
    rates = result["finetuned_win_rate"]
    assert rates["generalist"] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0, "position_flips": 0}
    assert rates["prompted"]["value"] == 0.5 and rates["prompted"]["position_flips"] == 0
    lines = judge_section(result, 0.95)
    assert "| generalist | 1 [1, 1] | 0 |" in lines and "| prompted | 0.5 [0.5, 0.5] | 0 |" in lines


def test_both_orders_cancel_a_judge_that_always_prefers_the_first_answer() -> None:
    with stand_in_judge(biased=True) as url:
        result = judged(scores(), JudgeParams(url=url, model="stand-in"), 200, 0.95, 0)
    for rate in result["finetuned_win_rate"].values():
        assert rate["value"] == 0.5 and rate["position_flips"] == COUNT


def test_the_key_is_sent_from_the_environment_and_never_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    with stand_in_judge(key="sekret-123") as url:
        judge = JudgeParams(url=url + "?token=abc", model="stand-in", api_key_env="JUDGE_KEY")
        monkeypatch.delenv("JUDGE_KEY", raising=False)
        with pytest.raises(UserError, match="JUDGE_KEY, which is not set"):
            judged(scores(), judge, 200, 0.95, 0)
        monkeypatch.setenv("JUDGE_KEY", "wrong")
        with pytest.raises(UserError, match="did not answer a judgement \\(HTTP 401"):
            judged(scores(), judge, 200, 0.95, 0)
        monkeypatch.setenv("JUDGE_KEY", "sekret-123")
        result = judged(scores(), judge, 200, 0.95, 0)
    assert result["finetuned_win_rate"]["generalist"]["value"] == 1.0
    recorded = json.dumps(result)
    assert "sekret" not in recorded and "abc" not in recorded
    assert result["judge"]["url"] == url


def test_credentials_in_the_url_are_refused() -> None:
    with pytest.raises(ValueError, match="no user:password@ in it"):
        JudgeParams(url="http://user:pw@127.0.0.1:9/v1", model="m")


def test_an_unreachable_judge_is_named() -> None:
    with stand_in_judge() as url:
        pass  # the server is gone once the block ends
    with pytest.raises(UserError, match=f"evaluate.judge: {url} did not answer a judgement \\(ConnectError"):
        judged(scores(), JudgeParams(url=url, model="stand-in", timeout_s=5), 200, 0.95, 0)


def test_a_failed_judgement_stops_the_queued_ones() -> None:
    """Ctrl-C or an error leaves at once: the judgements still queued are dropped, not all sent first."""
    received: list[str] = []
    with stand_in_judge(key="right", received=received) as url, pytest.raises(UserError, match="HTTP 401"):
        judged(scores(), JudgeParams(url=url, model="stand-in", concurrency=1), 200, 0.95, 0)
    assert 1 <= len(received) <= 2, f"{len(received)} of {2 * COUNT * 2} judgements sent after the first failure"
