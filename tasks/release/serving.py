"""`tailor serve`: an OpenAI-compatible HTTP server for the promoted model(s), built on LitServe.

LitServe owns the HTTP side (FastAPI/uvicorn), the queue, dynamic batching and streaming; this module supplies
the model work (`SpecialistAPI`) and the OpenAI behaviour a client relies on (`SpecialistSpec`): requests are
checked before they are queued, so one bad request gets its own 4xx and never fails the batch it would have joined.

All LoRA specialists share one copy of the base weights: each is a named adapter on one PEFT model, and a batch
that mixes specialists (and the base model) runs in one `generate` call with a per-row adapter (PEFT's mixed
adapter batches). A promotion swaps the production directory in one atomic step (tasks/core/atomic_dir.py); before
each batch the worker compares each served directory's fingerprint (its files' names, sizes, modification times
and the bytes of the small ones) with the one it loaded and loads the new version beside the old, so no request
sees a half-written model and none waits for a restart. Not the directory's inode: ext4 hands a freed inode to the
next new directory, so two promotions in a row give back the first version's inode.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import multiprocessing
import os
import queue
import secrets
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import litserve as ls
import torch
from fastapi import BackgroundTasks, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from litserve.specs.openai import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamingChoice,
    ChatMessage,
    ChoiceDelta,
    FunctionCall,
    OpenAISpec,
    ToolCall,
    UsageInfo,
    _openai_format_error,
)
from litserve.utils import LitAPIStatus, azip
from peft import PeftModel
from pydantic import BaseModel, PrivateAttr
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase, StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from tasks.core.errors import UserError
from tasks.formats import hermes
from tasks.formats.tool_calls import message_problem, read_tools
from tasks.model.loading import load_model, pick_device
from tasks.release.bundle import Bundle, Prompter
from tasks.release.lineage import tampering

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch
DEFAULT_MAX_TOKENS = 256
ROLES = {"system", "user", "assistant", "tool"}
API_KEY_ENV = "TAILOR_API_KEY"
# Limits like Hugging Face TGI's: each stop string is searched for at every token, and a body is parsed and
# tokenized before the model worker sees it, so one client could otherwise tie up the server.
MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 256
MAX_BODY_BYTES = 1024 * 1024
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "[::1]"]  # the Host headers a loopback server answers
MAX_CONCURRENT_REQUESTS = 128  # in flight at once; more are answered 429 (TGI's default)
FINGERPRINTED_BYTES = 64 * 1024  # files up to this size (configs, lineage, card) count with their bytes
GONE_KEPT_SECONDS = 600  # a stream whose client left is remembered this long (LitServe's request timeout)
log = logging.getLogger("tailor.serve")


@dataclass(frozen=True)
class ServedModel:
    """A name clients put in `model`, and the directory it is served from: a promoted bundle (tasks/release/
    bundle.py), or a LoRA adapter or full model given with --model."""

    name: str
    path: Path

    def kind(self) -> str | None:
        """"adapter", "full", "base" (a bundle that answers with the base model's weights), or None while the
        directory holds no model (nothing promoted yet)."""
        if (self.path / "adapter_config.json").is_file():
            return "adapter"
        if (self.path / "config.json").is_file():
            return "full"
        if (self.path / "approach.json").is_file():
            return "base"
        return None

    def prompter(self, identity: str) -> Prompter | None:
        """How this version builds each request's conversation (None: not a bundle; the messages go as they
        are). Loaded once per version, like the tampering check."""
        key = (self.path, identity)
        if key not in PROMPTERS:
            bundle = Bundle.read(self.path)
            PROMPTERS[key] = None if bundle is None else Prompter(self.path, bundle)
        return PROMPTERS[key]

    def identity(self) -> str | None:
        """A fingerprint that changes with every promotion into the directory; None while it is missing or is being
        swapped under the walk (the next batch looks again)."""
        digest = hashlib.sha256()
        try:
            for file in sorted(path for path in self.path.rglob("*") if path.is_file()):
                stat = file.stat()
                digest.update(f"{file.relative_to(self.path)}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
                if stat.st_size <= FINGERPRINTED_BYTES:
                    digest.update(file.read_bytes())
        except OSError:
            return None
        return digest.hexdigest() if self.path.is_dir() else None

    def tampering(self, identity: str) -> list[str]:
        """How a promoted folder's files differ from the sha256 digests its lineage.json recorded (empty: intact, or
        not a promoted folder: nothing to check against). Hashed once per version (`identity`)."""
        key = (self.path, identity)
        if key not in VERIFIED:
            lineage = self.path / "lineage.json"
            VERIFIED[key] = (tampering(self.path, json.loads(lineage.read_text(encoding="utf-8")))
                             if lineage.is_file() else [])
        return VERIFIED[key]


VERIFIED: dict[tuple[Path, str], list[str]] = {}  # (folder, version) -> tampering found, in each process
PROMPTERS: dict[tuple[Path, str], Prompter | None] = {}  # (folder, version) -> its bundle's prompt builder


def openai_error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = {401: "authentication_error", 404: "invalid_request_error"}.get(status, "invalid_request_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status)


class RequestProblem(HTTPException):
    """A request the server refuses, with OpenAI's error fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(status, message)
        self.param, self.code = param, code


def message_text(content: Any, index: int) -> str:
    """A message's text: a string, or a list of text parts (images and audio are not served)."""
    if isinstance(content, list) and all(getattr(part, "type", None) == "text" and isinstance(
            getattr(part, "text", None), str) for part in content):
        content = "".join(part.text for part in content)
    if not isinstance(content, str):
        raise RequestProblem(400, f"messages[{index}].content must be text", f"messages[{index}].content")
    try:
        content.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate such as "\ud800": the tokenizer would fail with a 500
        raise RequestProblem(400, f"messages[{index}].content is not valid Unicode text",
                             f"messages[{index}].content") from None
    return content


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


def request_messages(request: ChatCompletionRequest) -> list[dict[str, Any]]:
    """The request's messages as OpenAI's format spells them (tool calls and results included), text checked."""
    if not request.messages:
        raise RequestProblem(400, "messages must hold at least one message", "messages")
    messages: list[dict[str, Any]] = []
    for index, message in enumerate(request.messages):
        if message.role not in ROLES:
            raise RequestProblem(400, f"messages[{index}].role is {message.role!r}; use one of {sorted(ROLES)}",
                                 f"messages[{index}].role")
        calls = [call.model_dump(include={"id", "type", "function"}) for call in message.tool_calls or []]
        called = message.role == "assistant" and calls and message.content in (None, "")
        entry = {"role": message.role, "content": None if called else message_text(message.content, index)}
        if calls:
            entry["tool_calls"] = calls
        if message.role == "tool":
            entry["tool_call_id"] = message.tool_call_id
        messages.append(entry)
    return messages


def conversation(request: TrackedRequest) -> list[dict[str, str]]:
    """The request as the conversation training rendered: its tools (unless tool_choice is none), calls and results
    in the Hermes convention (tasks/formats/hermes.py), checked by the rules validate applies to training data."""
    messages = request_messages(request)
    offered = [tool.model_dump(exclude_none=True) for tool in request.tools or []]
    if offered or any(m["role"] == "tool" or "tool_calls" in m for m in messages):
        declared, problem = read_tools(offered)
        if problem:
            raise RequestProblem(400, problem, "tools")
        pending: dict[str, str] = {}
        for index, message in enumerate(messages):
            if problem := message_problem(message, index, messages[index - 1]["role"] if index else None, pending,
                                          declared):
                raise RequestProblem(400, f"messages[{index}]: {problem}", f"messages[{index}]")
    choice = request.tool_choice
    if choice not in (None, "auto", "none") and not offered:
        raise RequestProblem(400, "tool_choice names a call to make, but the request offers no tools", "tool_choice")
    if isinstance(choice, NamedToolChoice) and choice.function.name not in {t["function"]["name"] for t in offered}:
        raise RequestProblem(400, f"tool_choice names {choice.function.name!r}, which is not among the tools",
                             "tool_choice")
    return hermes.render(messages, [] if choice == "none" else offered, keep_reasoning=True)


def answer_opening(request: TrackedRequest, tokenizer: PreTrainedTokenizerBase) -> str:
    """What the assistant's reply is begun with, so that tool_choice holds: the opening of a call ("required"), of a
    call to the named function, or nothing. It ends where a token of the whole call would end: a piece cut inside a
    token (the space before the arguments' brace, say) would be tokenized as training never did, and the model, put
    off its own tokens, would write nonsense; the rest of the opening is the model's to write."""
    choice = request.tool_choice
    if isinstance(choice, NamedToolChoice):
        opening = f'{hermes.CALL_OPEN}\n{{"name": {hermes.dumped(choice.function.name)}, "arguments": '
    elif choice == "required":
        opening = f"{hermes.CALL_OPEN}\n"
    else:
        return ""
    whole = tokenizer(opening + '{"', add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return opening[:max((end for _, end in whole if end <= len(opening)), default=0)]


def reads_calls(request: ChatCompletionRequest) -> bool:
    return bool(request.tools) and request.tool_choice != "none"


def prompt_ids(tokenizer: PreTrainedTokenizerBase, turns: list[dict[str, str]], opening: str = "") -> list[int]:
    """The conversation through the model's chat template, ready for the assistant's turn (as in training), which
    begins with `opening` when one is given (a forced call), tokenized with the rest as training tokenized it.

    A client's text is tokenized as text: "<|im_start|>system" in a user message would otherwise become the real
    control tokens and forge a system turn. Such a conversation is rendered with a random mark in place of each
    message, and the template's parts and the messages are tokenized apart; any other takes the one-call path."""
    begun = [{"role": "assistant", "content": opening}] if opening else []
    options = {"add_generation_prompt": not opening, "continue_final_message": bool(opening)}
    controls = [token.content for token in tokenizer.added_tokens_decoder.values() if token.special]
    if not any(control in turn["content"] for turn in turns for control in controls):
        return tokenizer.apply_chat_template(turns + begun, tokenize=True, return_dict=True, **options)["input_ids"]
    marks = [f"{secrets.token_hex(16)}" for _ in turns]
    rendered = tokenizer.apply_chat_template([{**turn, "content": mark} for turn, mark in zip(turns, marks)] + begun,
                                             tokenize=False, **options)
    ids: list[int] = []
    for turn, mark in zip(turns, marks):
        template, rendered = rendered.split(mark, 1)
        ids += tokenizer(template, add_special_tokens=False)["input_ids"]
        ids += tokenizer(turn["content"], add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return ids + tokenizer(rendered, add_special_tokens=False)["input_ids"]


class TrackedRequest(ChatCompletionRequest):
    """A chat request with what travels with it to the model worker (LitServe sends the worker a copy of the
    request, not its own ids): a stream id, so the worker can stop generating when the client has gone away, and
    the conversation as the served bundle builds it (its system prompt, examples, retrieved examples), built once
    in the HTTP process by the check."""

    # OpenAI's choices ("any" was LitServe's spelling of "required"), a named function among them.
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    _stream: str = PrivateAttr(default_factory=lambda: secrets.token_hex(8))
    _turns: list[dict[str, str]] | None = PrivateAttr(default=None)
    _opening: str = PrivateAttr(default="")  # how the reply is begun (answer_opening), set with _turns


def max_tokens(request: ChatCompletionRequest) -> int:
    return request.max_completion_tokens or request.max_tokens or DEFAULT_MAX_TOKENS


def check_request(request: ChatCompletionRequest, available: Sequence[str], context_length: int) -> None:
    """Everything about a request's fields that can be refused before it is queued, as OpenAI's API refuses it."""
    if not request.model:
        raise RequestProblem(400, f"model is required; served: {', '.join(available)}", "model")
    if request.model not in available:
        raise RequestProblem(404, f"The model `{request.model}` does not exist; served: {', '.join(available)}",
                             "model", "model_not_found")
    for field in ("max_tokens", "max_completion_tokens"):
        value = getattr(request, field)
        if value is not None and not 1 <= value <= context_length:
            raise RequestProblem(400, f"{field} must be between 1 and {context_length}, got {value}", field)
    if request.temperature is not None and not 0 <= request.temperature <= 2:
        raise RequestProblem(400, f"temperature must be between 0 and 2, got {request.temperature}", "temperature")
    if request.top_p is not None and not 0 < request.top_p <= 1:
        raise RequestProblem(400, f"top_p must be in (0, 1], got {request.top_p}", "top_p")
    if request.n is not None and not 1 <= request.n <= 8:
        raise RequestProblem(400, f"n must be between 1 and 8, got {request.n}", "n")
    stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    if len(stops) > MAX_STOP_STRINGS or any(len(stop) > MAX_STOP_CHARS for stop in stops):
        raise RequestProblem(400, f"stop takes at most {MAX_STOP_STRINGS} strings of at most {MAX_STOP_CHARS} "
                             "characters each", "stop")
    if request.response_format:
        raise RequestProblem(400, "response_format is not supported by this server", "response_format")


def check_length(request: TrackedRequest, turns: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase,
                 context_length: int) -> None:
    length = len(prompt_ids(tokenizer, turns, request._opening))
    if length + max_tokens(request) > context_length:
        raise RequestProblem(400, f"This model's maximum context length is {context_length} tokens; the messages "
                             f"take {length} and max_tokens asks for {max_tokens(request)} more", "messages",
                             "context_length_exceeded")


class SpecialistSpec(OpenAISpec):
    """LitServe's OpenAI spec, with requests checked in the HTTP process before they reach the model worker."""

    def __init__(self, models: Sequence[ServedModel], base: Path, gone: Any) -> None:
        super().__init__()
        self.models, self.base = list(models), base
        self.gone = gone  # stream id -> when its client left: shared with the model worker (a Manager dict)
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._context_length = 0

    def available(self) -> dict[str, ServedModel]:
        """The models that can answer now, by name (a model's folder may be emptied while serving)."""
        return {model.name: model for model in self.models if model.kind() is not None}

    def tokenizer(self) -> tuple[PreTrainedTokenizerBase, int]:
        if self._tokenizer is None:  # loaded in the HTTP process on first use (it is not pickled across)
            self._tokenizer = AutoTokenizer.from_pretrained(self.base)
            config = json.loads((self.base / "config.json").read_text(encoding="utf-8"))
            self._context_length = int(config.get("max_position_embeddings", 2048))
        return self._tokenizer, self._context_length

    def check(self, request: TrackedRequest) -> None:
        """Refuse what can be refused before the request is queued; build its conversation as the bundle does."""
        tokenizer, context_length = self.tokenizer()
        available = self.available()
        check_request(request, list(available), context_length)
        model = available[request.model]
        identity = model.identity()
        problems = model.tampering(identity) if identity is not None else []
        if problems:
            raise RequestProblem(503, f"The model `{model.name}` is not served: its files differ from those its "
                                 f"lineage.json recorded at promotion ({'; '.join(problems[:3])}). Restore them with "
                                 "`dvc checkout`, or promote again", "model", "model_files_modified")
        turns = conversation(request)
        prompter = model.prompter(identity) if identity is not None else None
        if prompter is not None:
            turns = prompter.conversation(turns)
            if request.max_tokens is None and request.max_completion_tokens is None:
                request.max_tokens = prompter.bundle.max_new_tokens  # as evaluated
        request._opening = answer_opening(request, tokenizer)
        check_length(request, turns, tokenizer, context_length)
        request._turns = turns

    def approach(self, name: str) -> str:
        """What /v1/models says a name serves: its bundle's approach, or its kind of weights."""
        model = next(model for model in self.models if model.name == name)
        identity = model.identity()
        prompter = model.prompter(identity) if identity is not None else None
        if prompter is not None:
            return prompter.bundle.approach
        return "base model" if model.path.resolve() == self.base.resolve() else f"{model.kind()} (no bundle)"

    async def get_from_queues(self, uids: list[Any]) -> list[AsyncIterator[Any]]:
        pipes = await super().get_from_queues(uids)
        return [self.released(uid, pipe) for uid, pipe in zip(uids, pipes)]

    async def released(self, uid: Any, pipe: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """A choice's answer, and then its entry out of the server's response buffer: LitServe's OpenAI spec adds
        one per choice and never removes it (its issue #452), so memory grew with every request served."""
        try:
            async for item in pipe:
                yield item
        finally:
            self.response_buffer.pop(uid, None)

    async def chat_completion(self, request: TrackedRequest, background_tasks: BackgroundTasks) -> Any:
        # In a thread: tokenizing a long prompt and hashing a new version's files would stall every other stream.
        await asyncio.to_thread(self.check, request)
        return await super().chat_completion(request, background_tasks)

    async def streaming_completion(self, request: TrackedRequest, pipe_responses: list) -> AsyncIterator[str]:
        """The stream's chunks, each answer read as it comes into its trace, text and tool calls (a call is sent
        whole once its closing tag is written); when the client goes away first (Starlette then cancels this), the
        worker is told, and stops generating for it at its next token."""
        ended = False
        readers = [hermes.Reader(reads_calls(request), request._opening) for _ in pipe_responses]
        usage: list[UsageInfo] = []

        def choice(i: int, delta: hermes.Delta, end: bool = False) -> StreamedChoice:
            calls_before = readers[i].sent_calls - len(delta.calls)  # a call's index counts the whole answer's
            return StreamedChoice(index=i, delta=reply_message(delta, AnswerDelta, calls_before),
                                  finish_reason=("tool_calls" if readers[i].sent_calls else "stop") if end else None)

        try:
            try:
                async for step in azip(*pipe_responses):
                    encoded = answered_chunks(step)
                    usage = [UsageInfo(**chunk) for chunk in encoded]  # the last step's counts are the totals
                    yield sse(AnswerChunk(model=request.model or "", choices=[
                        choice(i, readers[i].feed(chunk.get("content") or "")) for i, chunk in enumerate(encoded)]))
                yield sse(AnswerChunk(model=request.model or "", usage=sum(usage), choices=[
                    choice(i, reader.finish(), end=True) for i, reader in enumerate(readers)]))
                yield "data: [DONE]\n\n"
            except Exception as error:  # as LitServe's own stream ends: an error event, not a broken connection
                log.error("error in a streamed answer: %s", error, exc_info=True)
                yield _openai_format_error(error)
            ended = True
        finally:
            if not ended:
                now = time.monotonic()
                for stream, since in list(self.gone.items()):  # those the worker had finished before it was told
                    if now - since > GONE_KEPT_SECONDS:
                        self.gone.pop(stream, None)
                self.gone[request._stream] = now


    async def non_streaming_completion(self, request: TrackedRequest, generator_list: list) -> Any:
        """The whole answer of each choice, read into its trace, text and tool calls."""
        choices, usage = [], []
        for i, pipe in enumerate(generator_list):
            reader = hermes.Reader(reads_calls(request), request._opening)
            async for item in pipe:
                encoded = answered_chunks([item])[0]
                usage.append(UsageInfo(**encoded))
                reader.feed(encoded.get("content") or "")
            reasoning, content, calls = reader.parts(final=True)
            choices.append(AnsweredChoice(index=i, message=reply_message(hermes.Delta(reasoning, content, calls),
                                                                         AnswerMessage),
                                          finish_reason="tool_calls" if calls else "stop"))
        return Answer(model=request.model or "", choices=choices, usage=sum(usage))


class AnswerMessage(ChatMessage):
    """A reply as OpenAI-compatible servers write it: the reasoning trace apart from the answer's text."""

    reasoning_content: str | None = None


class AnswerDelta(ChoiceDelta):
    reasoning_content: str | None = None


class AnsweredChoice(BaseModel):
    index: int
    message: AnswerMessage
    finish_reason: Literal["stop", "tool_calls"]


class Answer(ChatCompletionResponse):
    choices: list[AnsweredChoice]  # type: ignore[assignment]


class StreamedChoice(ChatCompletionStreamingChoice):
    delta: AnswerDelta | None  # type: ignore[assignment]


class AnswerChunk(ChatCompletionChunk):
    choices: list[StreamedChoice]  # type: ignore[assignment]
    usage: UsageInfo | None = None


def answered_chunks(step: Sequence[tuple[Any, str]]) -> list[dict[str, Any]]:
    """The worker's chunks of one step, one per choice; an error it raised is raised here, as LitServe does."""
    chunks = []
    for response, status in step:
        if status == LitAPIStatus.ERROR:
            raise response if isinstance(response, HTTPException) else HTTPException(status_code=500)
        chunks.append(json.loads(response))
    return chunks


def reply_message(delta: hermes.Delta, kind: type[ChatMessage], calls_before: int = 0) -> Any:
    """A reply (or a streamed piece of one) from what the reader found: text, trace, and calls with new ids."""
    calls = [ToolCall(index=calls_before + i, id=f"call_{secrets.token_hex(12)}", function=FunctionCall(
        name=name, arguments=hermes.dumped(arguments))) for i, (name, arguments) in enumerate(delta.calls)]
    return kind(role="assistant", content=delta.content or (None if calls else ""),
                reasoning_content=delta.reasoning or None, tool_calls=calls or None)


def sse(chunk: BaseModel) -> str:
    return f"data: {chunk.model_dump_json(by_alias=True)}\n\n"


class StepStreamer(BaseStreamer):
    """Receives each generation step's new token for every row (generate's first call passes the prompt)."""

    def __init__(self) -> None:
        self.steps: queue.Queue[list[int] | None] = queue.Queue()
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.steps.put(value.view(-1).tolist())

    def end(self) -> None:
        self.steps.put(None)


class RowLimits(StoppingCriteria):
    """Each row stops at its own max_tokens (generate runs to the largest)."""

    def __init__(self, prompt_width: int, limits: list[int]) -> None:
        self.prompt_width, self.limits = prompt_width, torch.tensor(limits)

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        return (input_ids.shape[1] - self.prompt_width >= self.limits).to(input_ids.device)


class ClientGone(StoppingCriteria):
    """Stops each row whose client has gone away (the HTTP side records it in the shared `gone`); one round trip to
    the dict's manager per step, against a step's milliseconds of generation."""

    def __init__(self, streams: list[str], gone: Any) -> None:
        self.streams, self.gone, self.found = streams, gone, set[str]()

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        left = set(self.gone.keys())
        self.found |= left & set(self.streams)
        return torch.tensor([stream in self.found for stream in self.streams], device=input_ids.device)


@dataclass
class RowText:
    """One request's answer as it streams: tokens so far, text sent, and whether it has ended."""

    tokens: list[int]
    sent: str = ""
    done: bool = False

    def delta(self, tokenizer: PreTrainedTokenizerBase, stop: Sequence[str], final: bool = False) -> str:
        """The text not sent yet; a trailing half of a multi-byte character waits for the next token unless
        this is the last chunk."""
        text = tokenizer.decode(self.tokens, skip_special_tokens=True)
        for word in stop:
            if word and word in text:
                text, self.done = text[: text.index(word)], True
        if text.endswith("\ufffd") and not (self.done or final):
            return ""
        new, self.sent = text[len(self.sent):], text
        return new


class SpecialistAPI(ls.LitAPI):
    """The model worker: one base model, every LoRA specialist as an adapter on it, batches of chat requests."""

    def __init__(self, models: Sequence[ServedModel], base: Path, max_batch_size: int, gone: Any) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=0.05,
                         spec=SpecialistSpec(models, base, gone))
        self.models, self.base, self.gone = list(models), base, gone

    def setup(self, device: str) -> None:
        # A terminal's Ctrl-C reaches every process of the group; `tailor serve` stops this worker itself.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.load(pick_device("cuda" if device.startswith("cuda") else "cpu"))

    def load(self, device: torch.device) -> None:
        self.device = device
        base, self.tokenizer = load_model(self.base, self.device)
        self.peft: Any = base  # becomes a PeftModel with the first adapter
        self.loaded: dict[str, tuple[str | None, str]] = {}  # name -> (identity, adapter name or "full")
        self.full: dict[str, Any] = {}
        self.generation_lock = threading.Lock()
        self.refresh()

    def refresh(self) -> None:
        """Load every served model whose directory is new or was swapped by a promotion since last time."""
        for model in self.models:
            identity, kind = model.identity(), model.kind()
            if model.path.resolve() == self.base.resolve():
                continue  # the base model itself: rows for it run with the adapters off
            if kind is None or identity is None or self.loaded.get(model.name, (None, ""))[0] == identity:
                continue
            if kind == "base":  # a bundle on the base weights: its rows run with the adapters off
                self.unload(model.name)
                self.loaded[model.name] = (identity, BASE_ADAPTER)
                continue
            if model.tampering(identity):  # never loaded; the HTTP side answers 503 for it
                continue
            if kind == "full":
                full = AutoModelForCausalLM.from_pretrained(model.path, dtype=next(self.peft.parameters()).dtype,
                                                            use_safetensors=True).to(self.device).eval()
                if model.identity() == identity:  # not swapped again while loading
                    self.full[model.name], self.loaded[model.name] = full, (identity, "full")
                continue
            adapter = f"{model.name}_{identity[:16]}".replace(".", "_").replace("-", "_")
            if isinstance(self.peft, PeftModel):
                self.peft.load_adapter(model.path, adapter_name=adapter)
            else:
                self.peft = PeftModel.from_pretrained(self.peft, model.path, adapter_name=adapter)
            self.peft.eval()
            if model.identity() != identity:  # swapped while loading: next batch loads the new one
                self.peft.delete_adapter(adapter)
                continue
            self.unload(model.name)
            self.loaded[model.name] = (identity, adapter)

    def unload(self, name: str) -> None:
        """Forget the weights served for `name` before its new version is served."""
        previous = self.loaded.pop(name, None)
        self.full.pop(name, None)  # a full model replaced by an adapter or a bundle must stop answering
        if previous and previous[1] not in ("full", BASE_ADAPTER):
            self.peft.delete_adapter(previous[1])

    def decode_request(self, request: TrackedRequest, context: dict[str, Any]) -> dict[str, Any]:
        stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        turns = request._turns if request._turns is not None else conversation(request)
        return {"stream": request._stream, "model": request.model,
                "prompt": prompt_ids(self.tokenizer, turns, request._opening), "max_tokens": max_tokens(request),
                "temperature": request.temperature or 0.0, "top_p": request.top_p or 1.0, "stop": stop}

    def batch(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return inputs

    def unbatch(self, output: Any) -> Any:
        return output

    def predict(self, requests: list[dict[str, Any]], context: Any = None) -> Iterator[list[dict[str, Any]]]:
        """Yield, step by step, one chunk per request (empty once it has ended or while its group waits)."""
        self.refresh()
        groups: dict[tuple[Any, ...], list[int]] = {}
        for row, request in enumerate(requests):
            engine = "full:" + request["model"] if request["model"] in self.full else "peft"
            groups.setdefault((engine, request["temperature"], request["top_p"]), []).append(row)
        for (engine, temperature, top_p), rows in groups.items():
            model = self.full[engine[5:]] if engine.startswith("full:") else self.peft
            yield from self.generate(model, requests, rows, temperature, top_p)

    def adapter_for(self, name: str) -> str:
        loaded = self.loaded.get(name)
        return loaded[1] if loaded and loaded[1] != "full" else BASE_ADAPTER

    def generate(self, model: Any, requests: list[dict[str, Any]], rows: list[int], temperature: float,
                 top_p: float) -> Iterator[list[dict[str, Any]]]:
        """One batched generate for `rows` (left padding), streamed; the other rows get empty chunks meanwhile."""
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        prompts = [requests[row]["prompt"] for row in rows]
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        limits = [requests[row]["max_tokens"] for row in rows]
        streams = [requests[row]["stream"] for row in rows]
        gone = ClientGone(streams, self.gone)
        streamer = StepStreamer()
        options: dict[str, Any] = {"do_sample": temperature > 0}
        if temperature > 0:
            options.update(temperature=temperature, top_p=top_p)
        if isinstance(model, PeftModel):
            options["adapter_names"] = [self.adapter_for(requests[row]["model"]) for row in rows]
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with self.generation_lock, torch.inference_mode():
                    model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max(limits),
                                   stopping_criteria=[RowLimits(width, limits), gone], streamer=streamer,
                                   pad_token_id=pad_id, eos_token_id=self.tokenizer.eos_token_id, **options)
            except BaseException as exc:  # handed to the consuming side, which raises it
                errors.append(exc)
                streamer.end()

        threading.Thread(target=run, daemon=True).start()
        texts = [RowText([]) for _ in rows]
        eos = self.tokenizer.eos_token_id
        while (step := streamer.steps.get()) is not None:
            chunk = [{"role": "assistant", "content": ""} for _ in requests]
            for i, token in enumerate(step):
                text = texts[i]
                if text.done or streams[i] in gone.found:
                    continue
                if token == eos or len(text.tokens) >= limits[i]:
                    text.done = True
                    continue
                text.tokens.append(token)
                chunk[rows[i]]["content"] = text.delta(self.tokenizer, requests[rows[i]]["stop"])
            yield chunk
        for stream in streams:
            self.gone.pop(stream, None)
        if gone.found:
            log.warning("stopped generating for %d request(s) whose client went away (after %s tokens)",
                        len(gone.found), ", ".join(str(len(texts[streams.index(s)].tokens)) for s in gone.found))
        if errors:
            raise errors[0]
        final = [{"role": "assistant", "content": ""} for _ in requests]
        for i, row in enumerate(rows):
            prompt, completion = len(requests[row]["prompt"]), len(texts[i].tokens)
            final[row].update(content=texts[i].delta(self.tokenizer, requests[row]["stop"], final=True),
                              prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
        yield final

    def encode_response(self, outputs: Iterator[list[dict[str, Any]]], context: Any = None
                        ) -> Iterator[list[dict[str, Any]]]:
        """The spec's per-message encoding (usage fields included), applied to each request of the batch."""
        for chunk in outputs:
            yield [self.spec._encode_response(message) for message in chunk]  # type: ignore[union-attr]


class BearerAuth:
    """Every route needs `Authorization: Bearer <key>` (OpenAI clients send their api_key that way)."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Only http scopes carry headers (the lifespan scope that starts LitServe's workers has none). A constant-
        # time compare: `!=` stops at the first differing byte, which times out the key byte by byte.
        if scope["type"] == "http" and not hmac.compare_digest(
                dict(scope["headers"]).get(b"authorization", b""), self.expected):
            await openai_error(401, "Incorrect or missing API key: send `Authorization: Bearer <key>`",
                               code="invalid_api_key")(scope, receive, send)
            return
        await self.app(scope, receive, send)


class ConcurrencyLimit:
    """At most `limit` chat requests in flight (streams until their last chunk); the next is answered 429 with
    Retry-After at once, as TGI does, instead of queueing without bound."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit, self.in_flight = app, limit, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/chat/completions"):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            busy = openai_error(429, f"The server is busy with {self.limit} requests; retry in a second",
                                code="rate_limit_exceeded")
            busy.headers["Retry-After"] = "1"
            await busy(scope, receive, send)
            return
        self.in_flight += 1  # one event loop: no lock needed between the check and the increment
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def listen_address(host: str) -> str:
    """The address LitServe will bind for --host: it takes 127.0.0.1, 0.0.0.0 and :: only."""
    address = {"localhost": "127.0.0.1"}.get(host, host)
    if address not in {"127.0.0.1", "0.0.0.0", "::"}:
        raise UserError(f"--host {host} is not supported: use 127.0.0.1 (this machine only, the default), or "
                        "0.0.0.0 / :: (every interface, with TAILOR_API_KEY set)")
    return address


def build_server(models: Sequence[ServedModel], base: Path, host: str, max_batch_size: int = 8,
                 max_concurrent: int = MAX_CONCURRENT_REQUESTS) -> ls.LitServer:
    """The LitServer with OpenAI-style errors everywhere and `/v1/models`; refuses to listen beyond loopback
    without an API key."""
    if not (base / "config.json").is_file():
        raise UserError(f"{base} holds no base model; run `dvc repro` (or `dvc pull`) first")
    key = os.environ.get(API_KEY_ENV, "")
    if not is_loopback(host) and not key:
        raise UserError(f"--host {host} accepts connections from other machines; set {API_KEY_ENV} to the key "
                        "clients must send (Authorization: Bearer), or keep the default 127.0.0.1")
    # The streams whose client went away, shared by the HTTP process and the model worker. LitServe starts both
    # with "spawn", so they share nothing else: a Manager's dict, whose proxy each of them reaches.
    manager = multiprocessing.get_context("spawn").Manager()
    api = SpecialistAPI(models, base, max_batch_size, manager.dict())
    accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    server = ls.LitServer(api, accelerator=accelerator, devices=1, timeout=600,
                          max_payload_size=MAX_BODY_BYTES,
                          middlewares=[(ConcurrencyLimit, {"limit": max_concurrent}),
                                       *([(BearerAuth, {"key": key})] if key else []),
                                       # On loopback, a web page the user opens could reach the server through a
                                       # name it points at 127.0.0.1 (DNS rebinding): only loopback names pass.
                                       *([(TrustedHostMiddleware, {"allowed_hosts": LOOPBACK_NAMES})]
                                         if is_loopback(host) else [])])
    spec: SpecialistSpec = api.spec  # type: ignore[assignment]

    async def problem(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, RequestValidationError):
            first = exc.errors()[0] if exc.errors() else {}
            if first.get("type") == "json_invalid":
                return openai_error(400, "the request body is not valid JSON")
            where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
            return openai_error(400, f"invalid request: {where or 'body'}: {first.get('msg', 'malformed JSON')}",
                                where or None)
        assert isinstance(exc, StarletteHTTPException)
        return openai_error(exc.status_code, str(exc.detail), getattr(exc, "param", None), getattr(exc, "code", None))

    server.app.add_exception_handler(RequestValidationError, problem)
    server.app.add_exception_handler(StarletteHTTPException, problem)  # routing's 404/405 too

    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "tailor",
                                            "approach": spec.approach(name)} for name in spec.available()]}

    server.app.add_api_route("/v1/models", list_models, methods=["GET"])
    server.gone_manager = manager  # type: ignore[attr-defined]  # lives as long as the server
    return server


PARITY_NAME = "candidate"


@dataclass(frozen=True)
class ServedAnswer:
    prompt: list[int]  # the prompt's token ids, as the model worker received them
    text: str
    stopped: bool  # ended with the end-of-turn token before max_tokens


def served_answers(folder: Path, base: Path, conversations: list[list[dict[str, str]]]) -> list[ServedAnswer]:
    """Each conversation answered one at a time as `tailor serve` answers a greedy request without max_tokens for
    the bundle at `folder`: the same checks, conversation, prompt, weights and generation, without the HTTP server
    (the promote stage's parity check)."""
    api = SpecialistAPI([ServedModel(PARITY_NAME, folder)], base, 1, {})
    api.load(pick_device("auto"))
    spec: SpecialistSpec = api.spec  # type: ignore[assignment]
    answers = []
    for turns in conversations:
        request = TrackedRequest(model=PARITY_NAME, messages=turns, temperature=0)
        spec.check(request)
        decoded = api.decode_request(request, {})
        chunks = [chunk[0] for chunk in api.predict([decoded])]
        completion = chunks[-1]["completion_tokens"]
        answers.append(ServedAnswer(decoded["prompt"], "".join(chunk["content"] for chunk in chunks),
                                    completion < decoded["max_tokens"]))
    return answers
