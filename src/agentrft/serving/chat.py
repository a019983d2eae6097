"""``POST /v1/chat/completions``: render the conversation, sample it on the engine, answer or stream.

The request's conversation — messages, assistant ``tool_calls``, ``tool``
results, tool schemas — is rendered with the episode loop's own functions
(``normalize_messages``, then the chat format's ``prompt_tokens``), so a
trained agent is prompted at serving time exactly as it was in its rollouts
(for canonical assistant turns, the episode loop's incremental record equals
this whole-conversation rendering: the chat-format conformance tests). The
sampled turn is parsed back into ``content`` and ``tool_calls`` with the chat
format's parser.

What a request may cost the server is bounded, and the event loop never does
the heavy part:

* the body is read only up to ``settings.max_request_bytes`` (a 413 from its
  ``Content-Length``, before reading it, or as soon as more has arrived);
* decoding the JSON, validating, rendering, and decoding the sampled tokens
  run on the app's one tokenizer thread (``tokenizer_thread``: the tokenizer
  is never used from two threads, and ``/health`` answers meanwhile);
* at most ``settings.max_queued_requests`` requests are held before decoding
  (being read, rendered, or waiting for the sampler); one more is a 429;
* a client that goes away cancels its job: a plain request's disconnect is
  polled (``request.is_disconnected()``) while it waits for the engine, a
  stream's is seen by its response (see :mod:`~agentrft.serving.streaming`).

``model`` is the served name, or a LoRA adapter loaded through
``/v1/load_lora_adapter`` (:mod:`~agentrft.serving.adapters`): the request
is then sampled with that adapter, as in ``/v1/completions``, and answered
under its name. :func:`busy`, :func:`read_body` and
:func:`unless_disconnected` are shared with the completions router.

The handler reads what it needs from ``request.app.state``: ``engine``
(:class:`~agentrft.serving.engine.BatchingGenerator`), ``chat_format``,
``settings`` (:class:`~agentrft.serving.protocol.ServerSettings`),
``max_context``, ``tokenizer_thread`` and ``preparing`` (requests read or
rendered right now), all set by :func:`~agentrft.serving.app.create_app`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from agentrft.errors import AgentRFTError
from agentrft.models.chat_format import ChatFormat
from agentrft.rollout.sampler import Completion
from agentrft.serving.adapters import AdapterNotLoaded, adapter_for
from agentrft.serving.engine import BatchingGenerator, QueueFull
from agentrft.serving.protocol import (APIError, ChatCompletionRequest, ServerSettings, byte_size, check_supported,
                                       completion_body, completion_choice, conversation, parse_json_body,
                                       parse_request, stop_strings)
from agentrft.serving.streaming import EventStream, stream_events

logger = logging.getLogger(__name__)

router = APIRouter()

DISCONNECT_POLL_S = 0.1
"""How often a plain request waiting for the engine checks that its client is still there."""
CLIENT_CLOSED_REQUEST = 499  # nobody reads it: the status logged for a request whose client went away


@dataclass(frozen=True)
class _Plan:
    """What one request asks of the engine, and how its answer is shaped."""

    prompt: list[int]
    model: str
    """The name the request asked for and is answered under: the served model's, or a loaded adapter's."""
    generation: dict[str, Any]
    """Keyword arguments of :meth:`BatchingGenerator.submit` (``adapter`` included)."""
    stops: list[str]
    parse_tools: bool
    stream: bool
    include_usage: bool


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    """A chat completion, or its stream of chunks; refusals and failures as OpenAI's error JSON."""
    return await answer_or_error(_complete(request), "chat completion")


async def answer_or_error(answer: Awaitable[Response], what: str) -> Response:
    """``answer``'s response, with what can go wrong on the way as OpenAI's error JSON (the chat and the
    token-level completions routes share it): a client gone while its body was read gets 499 logged, an
    adapter unloaded between the request's check and its batch a 404, anything else (e.g. the sampler
    failed) a 500 for this request while the server keeps serving."""
    try:
        return await answer
    except APIError:
        raise
    except ClientDisconnect:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    except AdapterNotLoaded as e:
        raise APIError(404, str(e), param="model", code="model_not_found") from None
    except Exception as e:
        logger.exception("%s failed", what)
        raise APIError(500, f"generation failed: {type(e).__name__}: {e}", kind="server_error") from None


async def _complete(request: Request) -> Response:
    state = request.app.state
    engine, settings, loop = state.engine, state.settings, asyncio.get_running_loop()
    if state.preparing + engine.queued >= settings.max_queued_requests:
        raise busy(settings)
    state.preparing += 1
    try:
        raw = await read_body(request, settings.max_request_bytes)
        plan = await loop.run_in_executor(state.tokenizer_thread, _prepare, raw, state.chat_format, settings,
                                          state.max_context, lambda name: adapter_for(state, name))
        del raw
        tokens: asyncio.Queue | None = asyncio.Queue() if plan.stream else None
        try:
            job = engine.submit(plan.prompt, stream=tokens, **plan.generation)
        except QueueFull:
            raise busy(settings) from None
    finally:
        state.preparing -= 1
    if plan.stream:
        events = stream_events(engine, job, tokens, state.tokenizer_thread, state.chat_format, plan.model,
                               plan.generation["n"], len(plan.prompt), plan.stops, plan.parse_tools,
                               plan.include_usage)
        return EventStream(events, on_close=lambda: engine.cancel(job))
    completions = await unless_disconnected(request, engine, job)
    if completions is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    choices, n_completion = await loop.run_in_executor(state.tokenizer_thread, _choices, completions,
                                                       state.chat_format, plan.parse_tools, plan.stops)
    return JSONResponse(completion_body(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), plan.model,
                                        choices, len(plan.prompt), n_completion))


def busy(settings: ServerSettings) -> APIError:
    """The 429 for a full queue (``max_queued_requests``), with ``Retry-After``."""
    return APIError(429, f"the server is busy: {settings.max_queued_requests} requests are already in its queue; "
                         "retry later", kind="requests", code="rate_limit_exceeded", headers={"Retry-After": "1"})


async def read_body(request: Request, limit: int) -> bytearray:
    """The request body, read only up to ``limit`` bytes: a 413 beyond that."""
    too_large = APIError(413, f"the request body is larger than this server's limit of {byte_size(limit)} "
                              "(max_request_bytes)", code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large  # refused before a byte of it is read
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return body


async def unless_disconnected(request: Request, engine: BatchingGenerator, job) -> list[Completion] | None:
    """The job's completions; None, with the job cancelled, when the client goes away first."""
    waiter = asyncio.ensure_future(engine.result(job))
    try:
        while True:
            await asyncio.wait({waiter}, timeout=DISCONNECT_POLL_S)
            if waiter.done():
                return waiter.result()
            if await request.is_disconnected():
                return None
    finally:
        if not waiter.done():  # the client left, or this handler was cancelled
            waiter.cancel()
            engine.cancel(job)


def _prepare(raw: bytearray, chat_format: ChatFormat, settings: ServerSettings, max_context: int,
             adapter_of: Callable[[str], str | None]) -> _Plan:
    """Decode, validate and render a request body; on the tokenizer thread. ``adapter_of`` maps the request's
    ``model`` to its adapter (None: the served model), or raises the 404."""
    req = parse_request(parse_json_body(raw))
    return _plan(req, chat_format, settings, max_context, adapter_of)


def _choices(completions: list[Completion], chat_format: ChatFormat, parse_tools: bool,
             stops: list[str]) -> tuple[list[dict], int]:
    """The response's choices and the completion tokens they count; on the tokenizer thread."""
    choices, n_completion = [], 0
    for i, comp in enumerate(completions):
        choice, count = completion_choice(i, comp, chat_format, parse_tools, stops)
        choices.append(choice)
        n_completion += count
    return choices, n_completion


def _plan(req: ChatCompletionRequest, chat_format: ChatFormat, settings: ServerSettings, max_context: int,
          adapter_of: Callable[[str], str | None]) -> _Plan:
    """Validate ``req`` against this server and render its prompt; a 4xx :class:`APIError` when it cannot run."""
    adapter = adapter_of(req.model)
    check_supported(req)
    if req.n > settings.max_n:
        raise APIError(400, f"n must be at most {settings.max_n} on this server; got {req.n}", param="n")
    messages, tools = conversation(req)
    try:
        prompt = chat_format.prompt_tokens(messages, tools)
    except (ValueError, RecursionError, AgentRFTError) as e:
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

    generation = dict(n=req.n, max_new_tokens=max_tokens,
                      temperature=1.0 if req.temperature is None else req.temperature,
                      top_p=1.0 if req.top_p is None else req.top_p, seed=req.seed,
                      stop_token_ids=tuple(chat_format.stop_token_ids), adapter=adapter)
    return _Plan(prompt, req.model, generation, stop_strings(req), parse_tools=bool(tools) and req.tool_choice != "none",
                 stream=bool(req.stream), include_usage=bool((req.stream_options or {}).get("include_usage")))
