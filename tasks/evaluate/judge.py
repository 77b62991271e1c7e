"""A judge for open answers: a model behind any OpenAI-compatible API compares each approach's answer with the
fine-tuned model's, example by example, where ROUGE and chrF only count words shared with one reference.

Each pair is judged twice, in both orders, so that a judge that prefers whichever answer comes first (the position
bias every LLM judge has) cancels out: the fine-tuned answer scores 1 when it wins both, 0 when it loses both, and
0.5 for a tie or a split verdict. The win rate is the mean over the examples, with the same paired bootstrap as every
other metric. The judge is asked for one letter at temperature 0; the API key is read from the environment variable
evaluate.judge.api_key_env and never written anywhere.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np

from tasks.core.approaches import FINETUNED
from tasks.core.errors import UserError
from tasks.core.params import JudgeParams
from tasks.evaluate.score_files import ScoreFile
from tasks.evaluate.statistics import paired_bootstrap
from tasks.formats.hermes import final_answer

PROMPT = """You compare two answers to the same request. The reference answer shows what a correct answer says.

Request:
{question}

Reference answer:
{reference}

Answer A:
{first}

Answer B:
{second}

Which answer is better: more correct and more faithful to the reference, then clearer? Reply with one letter: A or B,
or T if they are equally good."""
VERDICTS = ("A", "B", "T")


def address(judge: JudgeParams) -> str:
    """The judge's URL without its query (which may carry a key), for reports and errors."""
    return str(httpx.URL(judge.url).copy_with(query=None))


def completions(judge: JudgeParams) -> httpx.URL:
    """The API's chat completions route, its query (an api-version, say) kept."""
    url = httpx.URL(judge.url)
    return url.copy_with(path=url.path.rstrip("/") + "/chat/completions")


def ask(client: httpx.Client, judge: JudgeParams, route: httpx.URL, question: str, reference: str, first: str,
        second: str) -> str:
    """The judge's verdict on one ordered pair: A, B or T (anything else it says counts as T)."""
    prompt = PROMPT.format(question=question, reference=reference, first=first, second=second)
    try:
        response = client.post(route, json={
            "model": judge.model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
            "max_tokens": 4})
        if response.is_error:
            raise ValueError(f"HTTP {response.status_code}: {response.text[:200]}")
        said = response.json()["choices"][0]["message"]["content"] or ""
    except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as exc:
        said = str(exc) if not isinstance(exc, httpx.HTTPError) else type(exc).__name__
        raise UserError(f"evaluate.judge: {address(judge)} did not answer a judgement ({said[:200]}); check that "
                        "its server runs, evaluate.judge.url, .model and .api_key_env") from None
    letter = said.strip()[:1].upper()
    return letter if letter in VERDICTS else "T"


def pair_score(forward: str, backward: str) -> float:
    """The fine-tuned answer's score from the verdicts with it second (forward) and first (backward)."""
    wins = (forward == "B") + (backward == "A")
    losses = (forward == "A") + (backward == "B")
    return 1.0 if wins == 2 else 0.0 if losses == 2 else 0.5


def client_for(judge: JudgeParams) -> httpx.Client:
    headers = {}
    if judge.api_key_env is not None:
        key = os.environ.get(judge.api_key_env)
        if not key:
            raise UserError(f"evaluate.judge.api_key_env names {judge.api_key_env}, which is not set: export it "
                            "with the judge's API key (it is read from the environment only)")
        headers["Authorization"] = f"Bearer {key}"
    return httpx.Client(headers=headers, timeout=judge.timeout_s)


def judged(scores: ScoreFile, judge: JudgeParams, samples: int, confidence: float, seed: int) -> dict[str, Any]:
    """The fine-tuned model's win rate against every other approach with its interval, and how often the judge's
    two verdicts on a pair disagreed (its position bias on this data)."""
    others = [a for a in scores.approaches if a != FINETUNED]
    answers = {a: [final_answer(p) for p in s.predictions] for a, s in scores.approaches.items()}
    jobs = [(question, reference, answers[other][i], answers[FINETUNED][i])
            for other in others for i, (question, reference) in enumerate(
                (e["prompt"], final_answer(e["response"])) for e in scores.examples)]
    route = completions(judge)
    with client_for(judge) as client, ThreadPoolExecutor(judge.concurrency) as pool:
        forward = list(pool.map(lambda job: ask(client, judge, route, *job), jobs))
        backward = list(pool.map(lambda job: ask(client, judge, route, job[0], job[1], job[3], job[2]), jobs))
    count = len(scores.examples)
    verdicts = list(zip(forward, backward))
    by_other = {other: verdicts[n * count:(n + 1) * count] for n, other in enumerate(others)}
    per_example = {other: np.array([pair_score(f, b) for f, b in pairs]) for other, pairs in by_other.items()}
    single, _ = paired_bootstrap(others, {"win_rate": lambda a, index: float(per_example[a][index].mean())}, count,
                                 samples, confidence, seed)
    # A flip: the same letter in both orders, so the answer's position decided, not the answer.
    return {"judge": {"url": address(judge), "model": judge.model},
            "finetuned_win_rate": {other: {**single[other]["win_rate"].as_dict(),
                                           "position_flips": sum(f == b != "T" for f, b in pairs)}
                                   for other, pairs in by_other.items()}}
