"""``POST /v1/completions`` with token ids in and out: what a remote sampler needs for token fidelity.

The request and response use vLLM's field names, so
:class:`~agentrft.rollout.openai_compat_sampler.OpenAICompatSampler` drives
``agentrft serve`` and a vLLM server the same way:

* ``prompt``: a list of token ids, a list of such lists (one choice per prompt and per ``n``, in the
  order vLLM uses: ``index = prompt_index * n + k``), or text (encoded with the served tokenizer);
* ``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``n``, ``stop_token_ids`` (generation ends after
  one of them, which is kept in ``token_ids``), ``ignore_eos`` (default false, as in vLLM: the tokenizer's
  end-of-sequence token also stops);
* ``logprobs: 0`` returns each sampled token's log-probability (``logprobs.token_logprobs``, under
  ``softmax(logits / temperature)``, as the local sampler records it), with ``return_tokens_as_token_ids``
  the tokens as ``"token_id:N"`` strings; ``return_token_ids`` adds ``token_ids`` and ``prompt_token_ids``
  to each choice;
* ``model``: the served name, or a LoRA adapter loaded through ``/v1/load_lora_adapter``
  (:mod:`~agentrft.serving.adapters`).

No prompt is rendered: the ids are sampled from exactly as given, and the ids sampled come back exactly,
never re-tokenised from text. Every prompt of a request is its own engine job, so they wait together
and are decoded as one batch when their settings match (greedy rows do not depend on their batch mates).

Refused with a 400 rather than ignored: ``logprobs`` above 0 (the sampler returns no alternatives),
``stop`` strings, ``echo``, ``stream``, ``suffix``, penalties, ``logit_bias``, ``best_of`` other than
``n``, ``min_tokens``. Request size, queue limits and disconnects are handled as for chat completions
(:mod:`~agentrft.serving.chat`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentrft.rollout.sampler import Completion
from agentrft.serving.adapters import adapter_for
from agentrft.serving.chat import CLIENT_CLOSED_REQUEST, answer_or_error, busy, read_body, unless_disconnected
from agentrft.serving.engine import QueueFull
from agentrft.serving.protocol import APIError, ServerSettings, parse_json_body, token_usage

logger = logging.getLogger(__name__)

router = APIRouter()


class CompletionRequest(BaseModel):
    """vLLM's completions body, the fields this server honours; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    model: str
    prompt: list[int] | list[list[int]] | str | list[str]
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, lt=2**63)
    n: int = Field(1, ge=1)
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    logprobs: int | None = Field(None, ge=0)
    return_tokens_as_token_ids: bool | None = None
    return_token_ids: bool | None = None
    skip_special_tokens: bool = True
    add_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    user: str | None = None
    # accepted only with their no-op values
    stop: str | list[str] | None = None
    echo: bool | None = None
    stream: bool | None = None
    suffix: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    best_of: int | None = None
    min_tokens: int | None = None


@dataclass(frozen=True)
class _Plan:
    prompts: list[list[int]]
    adapter: str | None
    generation: dict[str, Any]
    """Keyword arguments of :meth:`BatchingGenerator.submit` (but ``adapter``)."""
    stop_ids: frozenset[int]
    """Ids that end a completion (the request's ``stop_token_ids``, and EOS unless ``ignore_eos``)."""


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    """A completion per prompt (and per ``n``), token ids and logprobs included; errors as OpenAI's JSON."""
    return await answer_or_error(_complete(request), "completion")


async def _complete(request: Request) -> Response:
    state = request.app.state
    engine, settings, loop = state.engine, state.settings, asyncio.get_running_loop()
    if state.preparing + engine.queued >= settings.max_queued_requests:
        raise busy(settings)
    state.preparing += 1
    try:
        raw = await read_body(request, settings.max_request_bytes)
        req = _parse(parse_json_body(raw))
        del raw
        adapter = adapter_for(state, req.model)
        plan = await loop.run_in_executor(state.tokenizer_thread, _plan, req, adapter, state.chat_format.tokenizer,
                                          settings, state.max_context)
        jobs = []
        try:
            for prompt in plan.prompts:
                jobs.append(engine.submit(prompt, adapter=plan.adapter, **plan.generation))
        except QueueFull:
            for job in jobs:
                engine.cancel(job)
            raise busy(settings) from None
    finally:
        state.preparing -= 1
    results: list[list[Completion]] = []
    for k, job in enumerate(jobs):
        got = await unless_disconnected(request, engine, job)
        if got is None:
            for rest in jobs[k + 1 :]:
                engine.cancel(rest)
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        results.append(got)
    body = await loop.run_in_executor(state.tokenizer_thread, _body, req, plan, results,
                                      state.chat_format.tokenizer)
    return JSONResponse(body)


def _parse(body: Any) -> CompletionRequest:
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        req = CompletionRequest.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        param = str(err["loc"][0]) if err["loc"] else ""  # deeper parts name pydantic's union members
        if err["type"] == "extra_forbidden":
            raise APIError(400, f"Unrecognized request argument supplied: {param}", param=param) from None
        raise APIError(400, f"invalid value for {param or 'the body'}: {err['msg']}", param=param or None) from None

    def refuse(param: str, why: str) -> None:
        raise APIError(400, f"{param}: {why}", param=param, code="unsupported_parameter")

    if req.logprobs:
        refuse("logprobs", "only logprobs: 0 is supported (each sampled token's own log-probability; the sampler "
                           "returns no alternatives)")
    if req.stop:
        refuse("stop", "stop strings are not supported on token completions; use stop_token_ids")
    for name in ("echo", "stream"):
        if getattr(req, name):
            refuse(name, "not supported by this server")
    if req.suffix:
        refuse("suffix", "not supported by this server")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name):
            refuse(name, "penalties are not supported (sampling is plain temperature/top_p)")
    if req.repetition_penalty not in (None, 1.0):
        refuse("repetition_penalty", "penalties are not supported (sampling is plain temperature/top_p)")
    if req.logit_bias:
        refuse("logit_bias", "not supported by this server")
    if req.best_of not in (None, req.n):
        refuse("best_of", "only best_of == n is supported")
    if req.min_tokens:
        refuse("min_tokens", "not supported by this server")
    return req


def _plan(req: CompletionRequest, adapter: str | None, tokenizer, settings: ServerSettings, max_context: int) -> _Plan:
    """The request's prompts as token ids, checked against this server; on the tokenizer thread."""
    prompt = req.prompt
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise APIError(400, "prompt must not be empty", param="prompt")
    if isinstance(prompt[0], int):
        prompts = [list(prompt)]
    elif isinstance(prompt[0], str):
        prompts = [list(tokenizer.encode(p, add_special_tokens=req.add_special_tokens)) for p in prompt]
    else:
        prompts = [list(p) for p in prompt]
    if req.n > settings.max_n:
        raise APIError(400, f"n: at most {settings.max_n}", param="n")
    if len(prompts) > settings.max_queued_requests:
        raise APIError(400, f"prompt: at most {settings.max_queued_requests} prompts per request "
                            "(max_queued_requests)", param="prompt")
    vocab = len(tokenizer)
    for i, p in enumerate(prompts):
        if not p:
            raise APIError(400, f"prompt[{i}] is empty", param="prompt")
        if min(p) < 0 or max(p) >= vocab:
            raise APIError(400, f"prompt[{i}] holds a token id outside the vocabulary [0, {vocab})", param="prompt")
    stop_ids = list(req.stop_token_ids or [])
    if not req.ignore_eos and tokenizer.eos_token_id is not None:
        stop_ids.append(int(tokenizer.eos_token_id))
    longest = max(len(p) for p in prompts)
    room = max_context - longest
    max_tokens = req.max_tokens if req.max_tokens is not None else min(settings.default_max_tokens, room)
    if max_tokens < 1 or longest + max_tokens > max_context:
        raise APIError(400, f"This model's maximum context length is {max_context} tokens; the longest prompt "
                            f"has {longest} and max_tokens asks for {max_tokens} more", param="max_tokens",
                       code="context_length_exceeded")
    generation = dict(n=req.n, max_new_tokens=max_tokens,
                      temperature=1.0 if req.temperature is None else req.temperature,
                      top_p=1.0 if req.top_p is None else req.top_p, seed=req.seed,
                      stop_token_ids=tuple(dict.fromkeys(stop_ids)))
    return _Plan(prompts, adapter, generation, frozenset(stop_ids))


def completion_logprobs(ids: list[int], logprobs: list[float], tokenizer, as_token_ids: bool) -> dict:
    """vLLM's ``logprobs`` of a completion choice for ``logprobs: 0``: each sampled token with its own logprob."""
    tokens = [f"token_id:{t}" if as_token_ids else tokenizer.decode([t]) for t in ids]
    offsets, at = [], 0
    for t in ids:
        offsets.append(at)
        at += len(tokenizer.decode([t]))
    return {"text_offset": offsets, "token_logprobs": list(logprobs), "tokens": tokens,
            "top_logprobs": [{tok: lp} for tok, lp in zip(tokens, logprobs)]}


def _body(req: CompletionRequest, plan: _Plan, results: list[list[Completion]], tokenizer) -> dict:
    """The ``text_completion`` body; on the tokenizer thread."""
    choices, n_completion = [], 0
    request_stops = set(req.stop_token_ids or [])
    for p, (prompt, comps) in enumerate(zip(plan.prompts, results)):
        for k, comp in enumerate(comps):
            ids = list(comp.token_ids)
            stopped_on = ids[-1] if comp.finish_reason == "stop" and ids and ids[-1] in plan.stop_ids else None
            text_ids = ids[:-1] if stopped_on is not None else ids
            choice: dict[str, Any] = {
                "index": p * req.n + k,
                "text": tokenizer.decode(text_ids, skip_special_tokens=req.skip_special_tokens),
                "logprobs": None if req.logprobs is None else
                completion_logprobs(ids, comp.logprobs, tokenizer, bool(req.return_tokens_as_token_ids)),
                "finish_reason": comp.finish_reason,
                "stop_reason": stopped_on if stopped_on in request_stops else None,
                "prompt_logprobs": None,
            }
            if req.return_token_ids:
                choice["token_ids"] = ids
                choice["prompt_token_ids"] = list(prompt)
            choices.append(choice)
            n_completion += len(ids)
    n_prompt = sum(len(p) for p in plan.prompts)
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": req.model, "choices": choices, "usage": token_usage(n_prompt, n_completion),
            "system_fingerprint": None}
