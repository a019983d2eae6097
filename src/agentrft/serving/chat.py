"""``POST /v1/chat/completions``: render the conversation, sample it on the engine, answer or stream.

The request's conversation — messages, assistant ``tool_calls``, ``tool``
results, tool schemas — is rendered with the episode loop's own functions
(``normalize_messages``, then the chat format's ``prompt_tokens``), so a
trained agent is prompted at serving time exactly as it was in its rollouts
(for canonical assistant turns, the episode loop's incremental record equals
this whole-conversation rendering: the chat-format conformance tests). The
sampled turn is parsed back into ``content`` and ``tool_calls`` with the chat
format's parser. Tokenisation and parsing stay on the event loop's thread, so
the tokenizer is never used from two threads (the engine's worker only
samples).

The handler reads what it needs from ``request.app.state``: ``engine``
(:class:`~agentrft.serving.engine.BatchingGenerator`), ``chat_format``,
``settings`` (:class:`~agentrft.serving.protocol.ServerSettings`) and
``max_context``, all set by :func:`~agentrft.serving.app.create_app`.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from agentrft.errors import AgentRFTError
from agentrft.models.chat_format import ChatFormat
from agentrft.serving.protocol import (APIError, ChatCompletionRequest, ServerSettings, check_supported,
                                       completion_body, completion_choice, conversation, parse_request,
                                       require_served_model, stop_strings)
from agentrft.serving.streaming import stream_events

logger = logging.getLogger(__name__)

router = APIRouter()


@dataclass(frozen=True)
class _Plan:
    """What one request asks of the engine, and how its answer is shaped."""

    prompt: list[int]
    generation: dict[str, Any]
    """Keyword arguments of :meth:`BatchingGenerator.generate`."""
    stops: list[str]
    parse_tools: bool


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    """A chat completion, or its stream of chunks; refusals and failures as OpenAI's error JSON."""
    try:
        return await _complete(request)
    except APIError:
        raise
    except Exception as e:  # e.g. the sampler failed: this request gets a 500, the server keeps serving
        logger.exception("chat completion failed")
        raise APIError(500, f"generation failed: {type(e).__name__}: {e}", kind="server_error") from None


async def _complete(request: Request) -> Response:
    state = request.app.state
    try:
        body = await request.json()
    except ValueError:
        raise APIError(400, "the request body is not valid JSON") from None
    req = parse_request(body)
    plan = _plan(req, state.chat_format, state.settings, state.max_context)
    if req.stream:
        include_usage = bool((req.stream_options or {}).get("include_usage"))
        events = stream_events(state.engine, state.chat_format, state.settings.model_name, plan.prompt,
                               plan.generation, plan.stops, plan.parse_tools, include_usage)
        return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    completions = await state.engine.generate(plan.prompt, **plan.generation)
    choices, n_completion = [], 0
    for i, comp in enumerate(completions):
        choice, count = completion_choice(i, comp, state.chat_format, plan.parse_tools, plan.stops)
        choices.append(choice)
        n_completion += count
    return JSONResponse(completion_body(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), state.settings.model_name,
                                        choices, len(plan.prompt), n_completion))


def _plan(req: ChatCompletionRequest, chat_format: ChatFormat, settings: ServerSettings, max_context: int) -> _Plan:
    """Validate ``req`` against this server and render its prompt; a 4xx :class:`APIError` when it cannot run."""
    require_served_model(req.model, settings)
    check_supported(req)
    if req.n > settings.max_n:
        raise APIError(400, f"n must be at most {settings.max_n} on this server; got {req.n}", param="n")
    messages, tools = conversation(req)
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

    generation = dict(n=req.n, max_new_tokens=max_tokens,
                      temperature=1.0 if req.temperature is None else req.temperature,
                      top_p=1.0 if req.top_p is None else req.top_p, seed=req.seed,
                      stop_token_ids=tuple(chat_format.stop_token_ids))
    return _Plan(prompt, generation, stop_strings(req), parse_tools=bool(tools) and req.tool_choice != "none")
