"""`tailor serve` on the tiny project's promoted model, called with the official `openai` client on loopback:
answers equal a one-at-a-time transformers generation, under concurrency too, for two LoRA specialists and the
base model; the bundles of the other approaches (retrieval, prompted, fine-tuned with retrieval), promoted by the
promote stage, answer the held-out questions exactly as reports/scores.json recorded them; bad requests get
OpenAI-style 4xx while the server stays up; a promotion is picked up without a restart; Ctrl-C leaves no process."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import psutil
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from stage_runner import run, set_params
from transformers import AutoModelForCausalLM, AutoTokenizer

from benchmarks.harness import environment, free_port
from tasks.core.atomic_dir import write_dir_atomically
from tasks.core.errors import UserError
from tasks.release.serving import API_KEY_ENV, ServedModel, build_server

pytestmark = pytest.mark.slow
KEY = "test-key"
PROMPTS = ["What does `len(obj)` do?", "What does `os.path.join(a, *p)` do?", "What does `shlex.quote(s)` do?"]
MAX_TOKENS = 12


@dataclass
class Server:
    root: Path
    url: str
    process: subprocess.Popen[str]
    log: Path  # the server's output so far

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=KEY, max_retries=0, timeout=120)


def reference_answers(root: Path, adapter: str | None) -> list[str]:
    """Greedy answers from plain transformers + PEFT, one prompt at a time, in this process."""
    tokenizer = AutoTokenizer.from_pretrained(root / "models/base")
    model = AutoModelForCausalLM.from_pretrained(root / "models/base")
    if adapter is not None:
        model = PeftModel.from_pretrained(model, root / adapter)
    answers = []
    for prompt in PROMPTS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=MAX_TOKENS, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        answers.append(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return answers


def randomize_lora_b(adapter: Path) -> None:
    """Large random B matrices in the adapter's weights (a new file), so that its greedy answers differ from prompt
    to prompt (the tiny model's own are nearly constant) and ties are unlikely."""
    weights = load_file(adapter / "adapter_model.safetensors")
    generator = torch.Generator().manual_seed(0)
    (adapter / "adapter_model.safetensors").unlink()
    save_file({name: torch.randn(t.shape, generator=generator) * 0.5 if "lora_B" in name else t
               for name, t in weights.items()}, adapter / "adapter_model.safetensors")


def second_specialist(production: Path, dest: Path) -> Path:
    """Another LoRA adapter on the same base: production's, with large random B matrices."""
    shutil.copytree(production, dest)
    (dest / "lineage.json").unlink()  # not a promoted model: no recorded digests to check its new weights against
    randomize_lora_b(dest)
    return dest


SHIPPED = ("retrieval", "prompted", "finetuned+retrieval")  # the approaches the first build did not promote


@dataclass
class Shipped:
    root: Path  # a copy of the first build, where each approach was promoted in turn
    bundles: dict[str, Path]  # approach -> its promoted bundle, moved out of models/production


@pytest.fixture(scope="module")
def shipped(first_build, tmp_path_factory: pytest.TempPathFactory) -> Shipped:
    """A copy of the first build with a margin (50%) no approach beats any other by, so that the generalist is
    recommended (nothing to ship); then each other approach named in promote.approach, promoted by `dvc repro`
    from no production model, and its bundle moved aside."""
    root = tmp_path_factory.mktemp("shipped") / "repo"
    shutil.copytree(first_build.root, root, symlinks=True)
    set_params(root, "promote", min_relative_improvement=0.5)
    shutil.rmtree(root / "models/production")
    result = run(root, "dvc", "repro", "promote")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    decision = json.loads((root / "reports/promotion.json").read_text())
    assert (decision["approach"], decision["promoted"]) == ("generalist", False), decision
    assert decision["reason"] == "failed: specializes; production left unchanged"
    bundles = {}
    for approach in SHIPPED:
        set_params(root, "promote", approach=approach)  # the last bundle was moved aside: no production now
        result = run(root, "dvc", "repro", "promote")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        decision = json.loads((root / "reports/promotion.json").read_text())
        assert (decision["approach"], decision["promoted"]) == (approach, True), decision
        assert next(g for g in decision["gates"] if g["name"] == "parity")["status"] == "pass"
        bundles[approach] = root / "bundles" / approach.replace("+", "-")
        shutil.move(root / "models/production", bundles[approach])
    return Shipped(root, bundles)


@pytest.fixture(scope="module")
def server(first_build, shipped: Shipped) -> Iterator[Server]:
    """The server on the first build's project: production, base, a second specialist as `candidate`, and the
    shipped bundles under their approaches' names."""
    root = first_build.root
    candidate = second_specialist(root / "models/production", root / "candidate")
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    log = root / "serve.log"
    bundles = [option for name, path in shipped.bundles.items() for option in ("--model", f"{name}={path}")]
    with log.open("w") as output:
        process = subprocess.Popen(["tailor", "serve", "--port", str(port), "--model", f"candidate={candidate.name}",
                                    *bundles],
                                   cwd=root, env=environment(TAILOR_API_KEY=KEY), start_new_session=True,
                                   stdout=output, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while True:
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        try:
            if httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.5)
    served = Server(root, url, process, log)
    served.client().chat.completions.create(model="base", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=1)  # waits for the model worker
    yield served
    os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C
    process.wait(timeout=60)
    output = log.read_text()
    assert "tailor: server stopped" in output and "Traceback" not in output, output[-3000:]
    time.sleep(1)
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)  # no process of the server's group is left


def ask(client: openai.OpenAI, model: str, prompt: str, **options: object) -> str:
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                            max_tokens=MAX_TOKENS, temperature=0, **options)
    return answer.choices[0].message.content or ""


def test_each_shipped_bundle_answers_the_held_out_questions_as_evaluation_recorded(server: Server,
                                                                                shipped: Shipped) -> None:
    """Every held-out question of reports/scores.json, asked as a client asks it (the question alone, no
    max_tokens): each bundle's answer is the one its approach was scored with, through its own system prompt,
    few-shot or retrieved examples and adapter."""
    scores = json.loads((shipped.root / "reports/scores.json").read_text())
    client = server.client()
    listed = httpx.get(f"{server.url}/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"]
    assert {m["id"]: m["approach"] for m in listed} == {"production": "finetuned", "base": "base model",
                                                        "candidate": "finetuned", **{a: a for a in SHIPPED}}
    for approach in SHIPPED:
        served = [client.chat.completions.create(model=approach, temperature=0, messages=[
            {"role": "user", "content": example["prompt"]}]).choices[0].message.content.strip()
            for example in scores["examples"]]
        assert served == scores["approaches"][approach]["predictions"], approach
    prompted = json.loads((shipped.bundles["prompted"] / "approach.json").read_text())
    assert len(prompted["examples"]) == 2 and prompted["retrieval_k"] == 0  # the tiny params' few_shot_k
    assert (shipped.bundles["retrieval"] / "retrieval_index/train.parquet").is_file()
    assert (shipped.bundles["finetuned+retrieval"] / "adapter_model.safetensors").is_file()


def test_serving_that_would_answer_otherwise_than_evaluation_is_refused_at_promotion(shipped: Shipped) -> None:
    """The base model's chat template edited after evaluation: the promote stage's parity check serves held-out
    questions through the new template, finds an answer the evaluation did not give, names its row and publishes
    nothing. (The fine-tuned model is given large random B first and evaluated, so that its answers follow the
    prompt: the tiny model's own hardly change with it.)"""
    root = shipped.root
    randomize_lora_b(root / "models/adapter")
    evaluated = run(root, "dvc", "repro", "--single-item", "evaluate")
    assert evaluated.returncode == 0, evaluated.stdout[-3000:] + evaluated.stderr[-3000:]
    template = root / "models/base/chat_template.jinja"
    # Every turn's role line gets a colon, the generation prompt's too: still a template where each turn extends
    # the one before (training's requirement), but other prompt tokens than evaluation's.
    edited = template.read_text().replace("message['role'] + '\n'", "message['role'] + ':\n'").replace(
        "<|im_start|>assistant\n", "<|im_start|>assistant:\n")
    assert edited.count(":\n'") == 2
    template.unlink()  # a new file: the bytes DVC's cache holds stay as they are
    template.write_text(edited)
    set_params(root, "promote", approach="finetuned")
    shutil.rmtree(root / "models/production", ignore_errors=True)
    result = run(root, "dvc", "repro", "--single-item", "promote")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    decision = json.loads((root / "reports/promotion.json").read_text())
    parity = next(g for g in decision["gates"] if g["name"] == "parity")
    assert not decision["promoted"] and decision["reason"] == "failed: parity; production left unchanged"
    assert re.match(r"held-out example \d+: served .+ \((stopped|ran to max tokens)\) where evaluation answered",
                    parity["detail"]), parity["detail"]
    assert "its chat template" in parity["detail"] and not (root / "models/production/approach.json").exists()


def test_openai_client_gets_each_models_answers_streaming_or_not_and_under_concurrency(server: Server) -> None:
    client = server.client()
    assert {m.id for m in client.models.list()} == {"production", "base", "candidate", *SHIPPED}
    expected = {"production": reference_answers(server.root, "models/production"),
                "candidate": reference_answers(server.root, "candidate"),
                "base": reference_answers(server.root, None)}
    assert len(set(expected["candidate"])) == len(PROMPTS) and expected["candidate"] != expected["production"]
    for model, answers in expected.items():
        assert [ask(client, model, prompt) for prompt in PROMPTS] == answers, model

    stream = client.chat.completions.create(model="production", messages=[{"role": "user", "content": PROMPTS[0]}],
                                            max_tokens=MAX_TOKENS, temperature=0, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == expected["production"][0]

    # Interleaved specialists and the base model, 8 at a time: batched and mixed, each answer as one at a time.
    jobs = [(model, i) for _ in range(3) for model in expected for i in range(len(PROMPTS))]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda job: ask(client, job[0], PROMPTS[job[1]]), jobs))
    assert answers == [expected[model][i] for model, i in jobs]


@pytest.mark.parametrize(("body", "status", "named"), [
    ({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404, "model_not_found"),
    ({"model": "production"}, 400, "messages"),
    ({"model": "production", "messages": "hi"}, 400, "messages"),
    ({"model": "production", "messages": [{"role": "robot", "content": "hi"}]}, 400, "role"),
    ({"model": "production", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}, 400, "max_tokens"),
    ({"model": "production", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**9}, 400,
     "max_tokens"),
    ({"model": "production", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400,
     "temperature"),
    ({"model": "production", "messages": [{"role": "user", "content": "word " * 2000}]}, 400,
     "context_length_exceeded"),
    ("{not json", 400, "not valid JSON"),
    # The security corpus of the serving surface: limits like TGI's, and bodies that used to answer 500.
    ({"model": "production", "messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]},
     400, "stop"),
    ({"model": "production", "messages": [{"role": "user", "content": "hi"}], "stop": ["x" * 10_000]}, 400, "stop"),
    ({"model": "production", "messages": [{"role": "user", "content": [{"type": "text", "image_url": "x"}]}]}, 400,
     "content"),
    ('{"model": "production", "messages": [{"role": "user", "content": "\\ud800"}]}', 400, "valid Unicode"),
    ({"model": "production", "messages": [{"role": "user", "content": "x" * 2_000_000}]}, 413, "413"),
])
def test_bad_requests_get_openai_errors_and_the_server_stays_up(server: Server, body: object, status: int,
                                                                named: str) -> None:
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    content = body if isinstance(body, str) else None
    response = httpx.post(f"{server.url}/chat/completions", headers=headers, content=content,
                          json=None if content else body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert named in f"{error} {response.status_code}" and {"message", "type", "param", "code"} <= error.keys()
    assert server.client().models.list().data


def test_openai_client_sees_errors_as_its_own_exceptions(server: Server) -> None:
    client = server.client()
    with pytest.raises(openai.NotFoundError):
        ask(client, "no-such-specialist", "hi")
    with pytest.raises(openai.BadRequestError):
        ask(client, "production", "hi", n=99)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url, api_key="wrong", max_retries=0).models.list()
    assert httpx.get(f"{server.url}/models").status_code == 401  # every route, not only completions


def test_a_promotion_is_served_without_a_restart(server: Server) -> None:
    """Swap production for the candidate as the promote stage does (one atomic exchange): the next request
    answers as the candidate; swapping back restores the old answers."""
    client = server.client()
    production = server.root / "models/production"
    kept = server.root / "kept-production"
    shutil.copytree(production, kept)
    try:
        write_dir_atomically(production, lambda staging: shutil.copytree(server.root / "candidate", staging))
        assert ask(client, "production", PROMPTS[1]) == ask(client, "candidate", PROMPTS[1])
    finally:
        write_dir_atomically(production, lambda staging: shutil.copytree(kept, staging))
        shutil.rmtree(kept)
    assert ask(client, "production", PROMPTS[1]) == reference_answers(server.root, "models/production")[1]


def test_two_promotions_while_idle_serve_the_newest(server: Server) -> None:
    """v1 -> v2 -> v3 with no request between: the swaps hand v3 the inode v1 had, and v3 must answer."""
    client = server.client()
    production = server.root / "models/production"
    kept = server.root / "kept-production"
    shutil.copytree(production, kept)
    expected = ask(client, "candidate", PROMPTS[2])
    try:
        write_dir_atomically(production, lambda staging: shutil.copytree(kept, staging, copy_function=shutil.copy))
        write_dir_atomically(production, lambda staging: shutil.copytree(server.root / "candidate", staging))
        assert ask(client, "production", PROMPTS[2]) == expected
    finally:
        write_dir_atomically(production, lambda staging: shutil.copytree(kept, staging))
        shutil.rmtree(kept)


def test_a_modified_promoted_model_answers_503_and_the_others_keep_serving(server: Server) -> None:
    """One flipped bit in production's weights: lineage.json's digests no longer match, so that name answers 503
    and names the file; the base model still answers; restoring the bytes serves production again."""
    client = server.client()
    weights = server.root / "models/production/adapter_model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    try:
        with pytest.raises(openai.APIStatusError) as refused:
            ask(client, "production", PROMPTS[0])
        assert refused.value.status_code == 503
        assert "adapter_model.safetensors: modified since promotion" in refused.value.message
        assert ask(client, "base", PROMPTS[0]) == reference_answers(server.root, None)[0]
    finally:
        weights.write_bytes(original)
    assert ask(client, "production", PROMPTS[0]) == reference_answers(server.root, "models/production")[0]


def test_on_loopback_only_loopback_host_names_are_answered(server: Server) -> None:
    """DNS rebinding: a page's own name pointed at 127.0.0.1 reaches the port, but its Host header gives it away."""
    auth = {"Authorization": f"Bearer {KEY}"}
    port = server.url.split(":")[2].split("/")[0]
    assert httpx.get(f"{server.url}/models", headers={**auth, "Host": f"attacker.example:{port}"}).status_code == 400
    assert httpx.get(f"{server.url}/models", headers={**auth, "Host": f"localhost:{port}"}).status_code == 200


def test_a_stream_whose_client_goes_away_stops_generating(server: Server) -> None:
    """A client that reads two chunks of a 400-token answer and hangs up: the model worker stops that row within a
    few tokens instead of generating the rest for nobody. The random `candidate` specialist rarely says EOS."""
    body = {"model": "candidate", "messages": [{"role": "user", "content": "Tell me everything."}],
            "max_tokens": 400, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server.url}/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {KEY}"}) as response:
        events = (line for line in response.iter_lines() if line)  # server-sent events, a blank line apart
        assert response.status_code == 200 and next(events).startswith("data:") and next(events).startswith("data:")
    deadline = time.monotonic() + 120
    while "whose client went away" not in server.log.read_text():
        assert time.monotonic() < deadline, server.log.read_text()[-3000:]
        time.sleep(0.5)
    said = re.search(r"whose client went away \(after (\d+) tokens\)", server.log.read_text())
    assert said and int(said.group(1)) < 400, server.log.read_text()[-3000:]
    assert ask(server.client(), "base", PROMPTS[0])  # the worker serves the next request


def server_memory(process: subprocess.Popen[str]) -> int:
    """Resident memory of the server and every process it started (the model worker included)."""
    root = psutil.Process(process.pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


def test_a_thousand_requests_leave_no_memory_behind(server: Server) -> None:
    """1,000 short requests, 8 at a time, after a warm-up of 200: the server's memory grows by less than 32 MiB
    (what is kept per request would add up over a server's life; LitServe alone kept a buffer entry each)."""
    client = server.client()

    def burst(count: int) -> None:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: client.chat.completions.create(
                model="base", messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=1), range(count)))

    burst(200)
    before = server_memory(server.process)
    burst(1000)
    assert server_memory(server.process) - before < 32 * 2**20


def test_listening_beyond_loopback_needs_an_api_key(first_build, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    models = [ServedModel("production", first_build.root / "models/production")]
    with pytest.raises(UserError, match=API_KEY_ENV):
        build_server(models, first_build.root / "models/base", "0.0.0.0")
