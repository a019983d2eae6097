"""An OpenAI-compatible chat completions server over the local sampler (``agentrft serve``).

``POST /v1/chat/completions`` renders the request's conversation — messages,
assistant ``tool_calls``, ``tool`` results, tool schemas — with the episode
loop's own functions (``normalize_messages``, then the chat format's
``prompt_tokens``), so a trained agent is prompted at serving time exactly as it
was in its rollouts (for canonical assistant turns, the episode loop's
incremental record equals this whole-conversation rendering: the chat-format
conformance tests). It samples with the :class:`~agentrft.rollout.sampler.Sampler`
seam (:class:`~agentrft.rollout.hf_sampler.HFSampler` in production, a scripted
double in tests) and parses the sampled turn back into ``content`` and
``tool_calls`` with the chat format's parser.

Concurrency: one worker thread owns the sampler, which is not thread-safe (its
prefix cache and fused weights are shared state). Requests wait in a queue;
whenever the worker is free it takes the waiting requests that can share one
``generate`` call and decodes them as one batch. Requests can share a call when
they have the same temperature, top_p and stop tokens and fit the context
together; a seeded request at temperature > 0 always runs alone, because one
generator draws for the whole call and batch mates would change what a seed
gives. Greedy rows do not depend on their batch mates (left padding is exact),
so batching never changes a greedy answer. Rows run to the batch's longest
``max_tokens`` and each is cut back to its own (the first k tokens of a longer
run are what a run of k tokens samples). Tokenisation and parsing stay on the
event loop's thread, so the tokenizer is never used from two threads either.

Streaming (``stream: true``): server-sent ``chat.completion.chunk`` events
as the tokens are sampled (the sampler's ``on_token`` callback, called from
the decode loop; a batch mate's tokens never reach another request's stream).
Text is sent once it is safe: not a partial UTF-8 character, not possibly the
start of a ``stop`` string, and, when tools are offered, not from the first
``<tool_call>`` on (a call is sent whole, as one ``tool_calls`` delta, once
the turn has ended and parsed; a malformed one arrives as content). The
deltas add up to the non-streamed response, except that the text before a
tool call may keep whitespace the parsed ``content`` strips.
``stream_options.include_usage`` adds the usage chunk.

Departures from the OpenAI API, rejected with a 400 rather than ignored:
``tool_choice`` ``"required"`` or a named
function (that needs constrained decoding), ``logprobs``, non-zero penalties,
``logit_bias`` and structured ``response_format``. A tool call the model wrote
badly is returned as plain ``content`` (``finish_reason`` ``stop``/``length``),
never as an error: the model's text is data. ``stop`` strings are applied to
the decoded text after sampling (the sampler stops on token ids only).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from agentrft.errors import AgentRFTError
from agentrft.models.chat_format import TOOL_CALL_OPEN, message_text, message_tool_calls, normalize_tool_schema
from agentrft.rollout.episode import normalize_messages
from agentrft.rollout.sampler import Completion, Sampler, SamplingParams

__all__ = ["APIError", "BatchingGenerator", "ServerSettings", "create_app", "serve_in_background"]

logger = logging.getLogger(__name__)

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_STOP_STRINGS = 4


class APIError(Exception):
    """A request the server refuses; rendered as OpenAI's error JSON ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status, content={
            "error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})


@dataclass(frozen=True)
class ServerSettings:
    model_name: str
    """The name clients pass as ``model``; any other name is a 404."""
    max_context: int | None = None
    """Prompt + completion tokens per sequence; default (and upper bound): the sampler's ``max_context``."""
    max_batch_size: int = 8
    """Most sequences one sampler call decodes (a request's ``n`` counts n times)."""
    default_max_tokens: int = 512
    """Completion limit when a request gives no ``max_tokens`` (capped by what the context has left)."""
    max_n: int = 8
    batch_window_s: float = 0.0
    """How long the worker waits for batch mates after a request arrives on an idle server (0: take what is
    already waiting; requests that arrive during a generation are batched into the next one anyway)."""


# -- the request --------------------------------------------------------------------------


class ChatCompletionRequest(BaseModel):
    """The OpenAI request body; unknown fields are refused (OpenAI: "Unrecognized request argument")."""

    model_config = ConfigDict(extra="forbid")

    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0, lt=2**63)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    stream: bool | None = None
    # accepted only with their no-op values (checked in _check_supported)
    stream_options: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    # caller bookkeeping: accepted, no effect on sampling
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    parallel_tool_calls: bool | None = None


def _parse_request(body: Any) -> ChatCompletionRequest:
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        if err["type"] == "extra_forbidden":
            raise APIError(400, f"Unrecognized request argument supplied: {param}", param=param) from None
        raise APIError(400, f"invalid value for {param}: {err['msg']}", param=param) from None


def _check_supported(req: ChatCompletionRequest) -> None:
    def refuse(param: str, why: str) -> None:
        raise APIError(400, f"{param}: {why}", param=param, code="unsupported_parameter")

    if req.stream_options is not None:
        if not req.stream:
            raise APIError(400, "stream_options: only allowed when stream is true", param="stream_options")
        unknown = sorted(set(req.stream_options) - {"include_usage", "include_obfuscation"})
        if unknown:
            refuse(f"stream_options.{unknown[0]}", "not supported by this server (include_usage is)")
    if req.logprobs or req.top_logprobs:
        refuse("logprobs", "logprobs are not supported by this server")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name):
            refuse(name, "penalties are not supported by this server (sampling is plain temperature/top_p)")
    if req.logit_bias:
        refuse("logit_bias", "logit_bias is not supported by this server")
    if req.response_format and req.response_format.get("type") != "text":
        refuse("response_format", 'only {"type": "text"} is supported (no constrained decoding)')
    choice = req.tool_choice
    if choice is not None and choice not in ("auto", "none"):
        refuse("tool_choice", f'{choice!r} is not supported: this server cannot force a tool call (no constrained '
                              'decoding); use "auto" or "none"')
    if req.stop is not None:
        stops = [req.stop] if isinstance(req.stop, str) else req.stop
        if len(stops) > MAX_STOP_STRINGS or not all(stops):
            raise APIError(400, f"stop: give at most {MAX_STOP_STRINGS} non-empty strings", param="stop")


def _conversation(req: ChatCompletionRequest) -> tuple[list[dict], list[dict] | None]:
    """Validated messages and tool schemas, normalised the way the episode loop normalises a task's messages."""
    for i, m in enumerate(req.messages):
        role = m.get("role")
        if role not in ROLES:
            raise APIError(400, f"messages[{i}].role must be one of {', '.join(ROLES)}; got {role!r}",
                           param=f"messages[{i}].role")
        try:
            message_text(m.get("content"))
        except ValueError as e:
            raise APIError(400, f"messages[{i}].content: {e}", param=f"messages[{i}].content") from None
        if role == "assistant":
            try:
                message_tool_calls(m)
            except ValueError as e:
                raise APIError(400, f"messages[{i}].tool_calls: {e}", param=f"messages[{i}].tool_calls") from None
        elif m.get("tool_calls"):
            raise APIError(400, f"messages[{i}]: only assistant messages carry tool_calls",
                           param=f"messages[{i}].tool_calls")
        if role == "tool" and not m.get("tool_call_id"):
            raise APIError(400, f"messages[{i}]: a tool message needs tool_call_id",
                           param=f"messages[{i}].tool_call_id")
    tools = None
    if req.tools:
        tools = []
        for j, t in enumerate(req.tools):
            try:
                schema = normalize_tool_schema(t)
            except ValueError as e:
                raise APIError(400, f"tools[{j}]: {e}", param=f"tools[{j}]") from None
            fn = schema.get("function")
            if schema.get("type", "function") != "function" or not isinstance(fn, dict) or not fn.get("name"):
                raise APIError(400, f'tools[{j}] must be {{"type": "function", "function": {{"name": ...}}}}',
                               param=f"tools[{j}]")
            tools.append(schema)
    return normalize_messages(req.messages), tools


# -- batching generation on one worker thread -----------------------------------------------


@dataclass(eq=False)
class _Job:
    prompt: list[int]
    n: int
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop_token_ids: tuple[int, ...]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    stream: asyncio.Queue | None = None  # (choice index, token id) as they are sampled, for stream: true

    def batch_key(self) -> tuple:
        """Jobs with equal keys can share one sampler call."""
        if self.temperature <= 0:
            return ("greedy", self.stop_token_ids)  # argmax: top_p and seed play no part
        if self.seed is not None:
            return ("seeded", id(self))  # alone: batch mates would change what the seed draws
        return ("sampled", self.temperature, self.top_p, self.stop_token_ids)


class BatchingGenerator:
    """Owns a sampler on one worker thread; requests waiting together with compatible settings share a call."""

    def __init__(self, sampler: Sampler, max_context: int, max_batch_size: int = 8, batch_window_s: float = 0.0):
        self.sampler = sampler
        self.max_context = max_context
        self.max_batch_size = max_batch_size
        self.batch_window_s = batch_window_s
        self.stats = {"requests": 0, "calls": 0, "largest_call": 0}
        """Requests served, sampler calls made, and the most sequences one call decoded."""
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        try:
            self._can_stream = "on_token" in inspect.signature(sampler.generate).parameters
        except (TypeError, ValueError):
            self._can_stream = False

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="agentrft-sampler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    async def generate(self, prompt: list[int], *, n: int, max_new_tokens: int, temperature: float, top_p: float,
                       seed: int | None, stop_token_ids: tuple[int, ...],
                       stream: asyncio.Queue | None = None) -> list[Completion]:
        """``n`` completions of ``prompt``; raises what the sampler raised. With ``stream``, each sampled token
        is also put there as ``(choice index, token id)`` as it comes (all of them before this returns)."""
        if self._thread is None:
            raise RuntimeError("the generator is not running (start() it, or serve the app through its lifespan)")
        loop = asyncio.get_running_loop()
        job = _Job(list(prompt), n, max_new_tokens, temperature, top_p, seed, tuple(stop_token_ids), loop,
                   loop.create_future(), stream)
        self._queue.put(job)
        return await job.future

    def _work(self) -> None:
        pending: list[_Job] = []
        while True:
            if not pending:
                job = self._queue.get()
                if job is None:
                    return
                pending.append(job)
                if self.batch_window_s:
                    time.sleep(self.batch_window_s)
            while True:  # everything else already waiting
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    for j in pending:
                        _settle(j, error=RuntimeError("the server is shutting down"))
                    return
                pending.append(job)
            batch = self._take_batch(pending)
            if batch:
                self._run(batch)

    def _take_batch(self, pending: list[_Job]) -> list[_Job]:
        """Remove and return the oldest job plus the waiting jobs that can share its call."""
        live = [j for j in pending if not j.future.cancelled()]  # the client went away
        pending.clear()
        if not live:
            return []
        first, rest = live[0], live[1:]
        batch, key = [first], first.batch_key()
        rows, longest, most = first.n, len(first.prompt), first.max_new_tokens
        for job in rest:
            fits = (rows + job.n <= self.max_batch_size
                    and max(longest, len(job.prompt)) + max(most, job.max_new_tokens) <= self.max_context)
            if job.batch_key() == key and fits:
                batch.append(job)
                rows, longest, most = rows + job.n, max(longest, len(job.prompt)), max(most, job.max_new_tokens)
            else:
                pending.append(job)
        return batch

    def _run(self, batch: list[_Job]) -> None:
        first = batch[0]
        params = SamplingParams(
            temperature=first.temperature,
            top_p=first.top_p,
            max_new_tokens=max(j.max_new_tokens for j in batch),
            stop_token_ids=first.stop_token_ids,
            seed=first.seed if first.batch_key()[0] == "seeded" else None,
        )
        prompts = [j.prompt for j in batch for _ in range(j.n)]
        rows = [(j, c) for j in batch for c in range(j.n)]
        sent = [0] * len(rows)

        def on_token(row: int, token: int) -> None:  # on this worker thread, from the decode loop
            job, choice = rows[row]
            if job.stream is not None and sent[row] < job.max_new_tokens:  # rows run to the batch's longest
                sent[row] += 1
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is reading any more
                    job.loop.call_soon_threadsafe(job.stream.put_nowait, (choice, token))

        streaming = any(j.stream is not None for j in batch)
        try:
            if streaming and self._can_stream:
                completions = self.sampler.generate(prompts, params, on_token=on_token)
            else:
                completions = self.sampler.generate(prompts, params)
                if streaming:  # a sampler without on_token: its tokens arrive when the whole answer is done
                    for row, c in enumerate(completions):
                        for token in c.token_ids:
                            on_token(row, token)
        except Exception as e:  # the requests fail, the server keeps serving
            for j in batch:
                _settle(j, error=e)
            return
        self.stats["calls"] += 1
        self.stats["requests"] += len(batch)
        self.stats["largest_call"] = max(self.stats["largest_call"], len(prompts))
        i = 0
        for j in batch:
            _settle(j, result=[_truncate(c, j.max_new_tokens) for c in completions[i : i + j.n]])
            i += j.n


def _truncate(c: Completion, max_new_tokens: int) -> Completion:
    if len(c.token_ids) <= max_new_tokens:
        return c
    return Completion(c.token_ids[:max_new_tokens], c.logprobs[:max_new_tokens], "length")


def _settle(job: _Job, result: list[Completion] | None = None, error: BaseException | None = None) -> None:
    """Hand the outcome to the request's event loop (futures are not thread-safe)."""

    def settle() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        job.loop.call_soon_threadsafe(settle)


# -- the response ------------------------------------------------------------------------------


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _choice(index: int, comp: Completion, chat_format, parse_tools: bool, stops: Sequence[str]) -> tuple[dict, int]:
    """One OpenAI ``choice`` and the completion tokens it counts."""
    ids = list(comp.token_ids)
    finish = comp.finish_reason
    body = ids[:-1] if finish == "stop" and ids and ids[-1] in chat_format.stop_token_ids else ids
    text = chat_format.decode(body)
    count = len(ids)
    cut = _first_stop(text, stops) if stops else None
    if cut is not None:  # OpenAI: the stop sequence itself is not returned; count the tokens up to it
        text, finish = text[:cut], "stop"
        lo, hi = 1, len(body)  # smallest k whose decoded prefix already contains a stop string
        while lo < hi:
            mid = (lo + hi) // 2
            if _first_stop(chat_format.decode(body[:mid]), stops) is not None:
                hi = mid
            else:
                lo = mid + 1
        count = lo
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if parse_tools:
        parsed = chat_format.parse_assistant(text)
        if parsed.tool_calls and not parsed.parse_errors:  # a malformed call: the whole turn stays plain text
            message = {"role": "assistant", "content": parsed.content or None,
                       "tool_calls": [c.to_openai() for c in parsed.tool_calls]}
            finish = "tool_calls"
    return {"index": index, "message": message, "finish_reason": finish, "logprobs": None}, count


def _held_back(text: str, markers: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is the start of one of ``markers`` (it may still become one)."""
    best = 0
    for marker in markers:
        for k in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:k]):
                best = k
                break
    return best


class _StreamedChoice:
    """One choice of a streamed response: its tokens so far, and the part of their text already sent."""

    def __init__(self, chat_format, stops: Sequence[str], parse_tools: bool) -> None:
        self.chat_format, self.stops, self.parse_tools = chat_format, list(stops), parse_tools
        self.ids: list[int] = []
        self.sent = ""
        self.closed = False  # end of turn, a stop string or a tool call: no more text streams

    def push(self, token: int) -> str:
        """The content delta this token makes safe to send ("" when none)."""
        if self.closed:
            return ""
        if token in self.chat_format.stop_token_ids:
            self.closed = True
            return ""
        self.ids.append(token)
        text = self.chat_format.decode(self.ids)
        safe = len(text.rstrip("\ufffd"))  # a partial UTF-8 character decodes as U+FFFD until it completes
        if self.stops:
            cut = _first_stop(text, self.stops)
            if cut is not None:
                safe, self.closed = min(safe, cut), True
            else:
                safe = min(safe, len(text) - _held_back(text, self.stops))
        if self.parse_tools:
            at = text.find(TOOL_CALL_OPEN)
            if at >= 0:
                safe, self.closed = min(safe, at), True
            else:
                safe = min(safe, len(text) - _held_back(text, [TOOL_CALL_OPEN]))
            safe = len(text[:safe].rstrip())  # whitespace waits for more text: parsed content is stripped
        if safe > len(self.sent) and text.startswith(self.sent):
            delta, self.sent = text[len(self.sent) : safe], text[:safe]
            return delta
        return ""

    def finish(self, choice: dict) -> list[dict]:
        """The last deltas of this choice, given its whole (non-streamed) ``choice``: the rest of the content,
        the tool calls, the finish reason."""
        message = choice["message"]
        content = message.get("content") or ""
        deltas: list[dict] = []
        if len(content) > len(self.sent) and content.startswith(self.sent):
            deltas.append({"index": choice["index"], "delta": {"content": content[len(self.sent) :]},
                           "logprobs": None, "finish_reason": None})
        if message.get("tool_calls"):
            calls = [{"index": k, **call} for k, call in enumerate(message["tool_calls"])]
            deltas.append({"index": choice["index"], "delta": {"tool_calls": calls}, "logprobs": None,
                           "finish_reason": None})
        deltas.append({"index": choice["index"], "delta": {}, "logprobs": None, "finish_reason": choice["finish_reason"]})
        return deltas


# -- the app -----------------------------------------------------------------------------------


def create_app(sampler: Sampler, chat_format, settings: ServerSettings) -> FastAPI:
    """The FastAPI app serving ``sampler`` under ``settings.model_name`` (the worker runs during its lifespan)."""
    limits = [int(c) for c in (settings.max_context, getattr(sampler, "max_context", None)) if c]
    if not limits:
        raise AgentRFTError("ServerSettings.max_context is required for a sampler without max_context")
    max_context = min(limits)
    engine = BatchingGenerator(sampler, max_context, settings.max_batch_size, settings.batch_window_s)
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="agentrft", lifespan=lifespan)
    app.state.engine = engine
    model_card = {"id": settings.model_name, "object": "model", "created": created, "owned_by": "agentrft"}

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return e.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return APIError(e.status_code, str(e.detail), kind="invalid_request_error").response()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [model_card]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict:
        if model_id != settings.model_name:
            raise APIError(404, f"The model {model_id!r} does not exist; this server serves {settings.model_name!r}",
                           param="model", code="model_not_found")
        return model_card

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> JSONResponse:
        try:
            return await complete(request)
        except APIError:
            raise
        except Exception as e:  # e.g. the sampler failed: this request gets a 500, the server keeps serving
            logger.exception("chat completion failed")
            raise APIError(500, f"generation failed: {type(e).__name__}: {e}", kind="server_error") from None

    async def complete(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            raise APIError(400, "the request body is not valid JSON") from None
        req = _parse_request(body)
        if req.model != settings.model_name:
            raise APIError(404, f"The model {req.model!r} does not exist; this server serves {settings.model_name!r}",
                           param="model", code="model_not_found")
        _check_supported(req)
        if req.n > settings.max_n:
            raise APIError(400, f"n must be at most {settings.max_n} on this server; got {req.n}", param="n")
        messages, tools = _conversation(req)
        try:
            prompt = chat_format.prompt_tokens(messages, tools)
        except (ValueError, AgentRFTError) as e:
            raise APIError(400, f"cannot render these messages with the {chat_format.name} chat format: {e}",
                           param="messages") from None

        n_prompt = len(prompt)
        max_tokens = req.max_completion_tokens or req.max_tokens
        room = max_context - n_prompt
        if room < 1 or (max_tokens is not None and max_tokens > room):
            asked = f" + {max_tokens} completion tokens (max_tokens)" if max_tokens is not None else ""
            raise APIError(400, f"This model's maximum context length is {max_context} tokens; the messages take "
                                f"{n_prompt} tokens{asked}. Shorten the conversation or lower max_tokens.",
                           param="messages", code="context_length_exceeded")
        if max_tokens is None:
            max_tokens = min(settings.default_max_tokens, room)

        temperature = 1.0 if req.temperature is None else req.temperature
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        parse_tools = bool(tools) and req.tool_choice != "none"
        generation = dict(n=req.n, max_new_tokens=max_tokens, temperature=temperature,
                          top_p=1.0 if req.top_p is None else req.top_p, seed=req.seed,
                          stop_token_ids=tuple(chat_format.stop_token_ids))
        if req.stream:
            usage = bool((req.stream_options or {}).get("include_usage"))
            return StreamingResponse(stream(prompt, generation, stops, parse_tools, usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        completions = await engine.generate(prompt, **generation)

        choices, n_completion = [], 0
        for i, comp in enumerate(completions):
            choice, count = _choice(i, comp, chat_format, parse_tools, stops)
            choices.append(choice)
            n_completion += count
        return JSONResponse({
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": settings.model_name,
            "choices": choices,
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_completion,
                      "total_tokens": n_prompt + n_completion},
            "system_fingerprint": None,
        })

    async def stream(prompt: list[int], generation: dict, stops: list[str], parse_tools: bool, usage: bool):
        """Server-sent events: a role chunk per choice, content deltas as tokens come, then each choice's end."""
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": settings.model_name, "system_fingerprint": None}

        def event(choices: list[dict], **extra: Any) -> str:
            body = {**head, "choices": choices, **({"usage": None} if usage else {}), **extra}
            return f"data: {json.dumps(body)}\n\n"

        n = generation["n"]
        states = [_StreamedChoice(chat_format, stops, parse_tools) for _ in range(n)]
        tokens: asyncio.Queue = asyncio.Queue()
        task = asyncio.ensure_future(engine.generate(prompt, stream=tokens, **generation))
        try:
            for i in range(n):
                yield event([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None}])
            while True:
                getter = asyncio.ensure_future(tokens.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    break
                choice, token = getter.result()
                delta = states[choice].push(token)
                if delta:
                    yield event([{"index": choice, "delta": {"content": delta}, "logprobs": None, "finish_reason": None}])
            while not tokens.empty():  # the worker hands every token over before the result
                choice, token = tokens.get_nowait()
                delta = states[choice].push(token)
                if delta:
                    yield event([{"index": choice, "delta": {"content": delta}, "logprobs": None, "finish_reason": None}])
            try:
                completions = task.result()
            except Exception as e:  # the headers are sent: the error goes in the stream, as OpenAI's does
                logger.exception("streamed chat completion failed")
                error = {"message": f"generation failed: {type(e).__name__}: {e}", "type": "server_error",
                         "param": None, "code": None}
                yield f"data: {json.dumps({'error': error})}\n\n"
                return
            n_completion = 0
            for i, comp in enumerate(completions):
                choice, count = _choice(i, comp, chat_format, parse_tools, stops)
                n_completion += count
                for delta in states[i].finish(choice):
                    yield event([delta])
            if usage:
                yield event([], usage={"prompt_tokens": len(prompt), "completion_tokens": n_completion,
                                       "total_tokens": len(prompt) + n_completion})
            yield "data: [DONE]\n\n"
        finally:
            task.cancel()  # the client went away first: a request still waiting is dropped from the queue

    return app


@contextlib.contextmanager
def serve_in_background(app: FastAPI, host: str = "127.0.0.1", start_timeout_s: float = 20.0):
    """Serve ``app`` with uvicorn on a free port of ``host`` in a daemon thread; yields its ``/v1`` base URL.

    For tests, benchmarks and notebooks (``agentrft serve`` runs uvicorn in the foreground). The server
    and its sampler worker stop when the block exits.
    """
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="agentrft-uvicorn", daemon=True)
    thread.start()
    deadline = time.time() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            server.should_exit = True
            raise AgentRFTError(f"the server did not start on {host} within {start_timeout_s:.0f} s")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=start_timeout_s)
