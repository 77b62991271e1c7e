"""The scores file: what the evaluation stages write is what promotion reads."""

from __future__ import annotations

from pathlib import Path

from tasks.evaluate.score_files import ScoreFile, Scores


def test_score_file_round_trip(tmp_path: Path) -> None:
    scores = ScoreFile("free_text", [{"prompt": "q", "response": "r"}],
                       {"a": Scores(nll=[1.5], target_tokens=[3], prompt_tokens=[7], predictions=["x"])})
    scores.write(tmp_path / "scores.json")
    assert ScoreFile.read(tmp_path / "scores.json") == scores
    assert scores.references() == ["r"]
