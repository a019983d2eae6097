"""The OpenAI chat completions wire format: the request, its validation, and the response bodies.

A request is parsed into :class:`ChatCompletionRequest` (unknown fields are
refused, as OpenAI refuses them), checked for what this server cannot honour,
and its conversation validated and normalised the way the episode loop
normalises a task's messages. Every refusal is an :class:`APIError`, which
renders as OpenAI's error JSON so the official SDK raises its usual exceptions.

Departures from the OpenAI API, rejected with a 400 rather than ignored:
``tool_choice`` ``"required"`` or a named function (that needs constrained
decoding), ``logprobs``, non-zero penalties, ``logit_bias`` and structured
``response_format``. A tool call the model wrote badly is returned as plain
``content`` (``finish_reason`` ``stop``/``length``), never as an error: the
model's text is data. ``stop`` strings are applied to the decoded text after
sampling (the sampler stops on token ids only).

The response builders (:func:`completion_choice`, :func:`completion_body`,
:func:`completion_chunk`, :func:`chunk_choice`) are the one place each OpenAI
body is shaped, for plain and streamed answers alike. Nothing here depends on
the web framework.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentrft.models.chat_format import message_text, message_tool_calls, normalize_tool_schema
from agentrft.rollout.episode import normalize_messages
from agentrft.rollout.sampler import Completion

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_STOP_STRINGS = 4


class APIError(Exception):
    """A request the server refuses; rendered as OpenAI's error JSON ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        """The error as OpenAI sends it: the body of an error response, or of an error event in a stream."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


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


def require_served_model(model_id: str, settings: ServerSettings) -> None:
    """Refuse (404 ``model_not_found``) a model name other than the one this server serves."""
    if model_id != settings.model_name:
        raise APIError(404, f"The model {model_id!r} does not exist; this server serves {settings.model_name!r}",
                       param="model", code="model_not_found")


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
    # accepted only with their no-op values (checked in check_supported)
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


def parse_request(body: Any) -> ChatCompletionRequest:
    """The decoded JSON body as a request; a 400 naming the first offending field otherwise."""
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


def check_supported(req: ChatCompletionRequest) -> None:
    """Refuse (400) the parameters this server cannot honour, rather than ignore them."""

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
    for name, penalty in (("presence_penalty", req.presence_penalty), ("frequency_penalty", req.frequency_penalty)):
        if penalty:
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


def conversation(req: ChatCompletionRequest) -> tuple[list[dict], list[dict] | None]:
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


def stop_strings(req: ChatCompletionRequest) -> list[str]:
    """The request's ``stop`` as a list (OpenAI takes one string or several)."""
    return [req.stop] if isinstance(req.stop, str) else list(req.stop or [])


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest of ``stops`` begins in ``text``; None when none occurs."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


# -- the response ------------------------------------------------------------------------------


def completion_choice(index: int, comp: Completion, chat_format, parse_tools: bool,
                      stops: Sequence[str]) -> tuple[dict, int]:
    """One OpenAI ``choice`` and the completion tokens it counts."""
    ids = list(comp.token_ids)
    finish = comp.finish_reason
    body = ids[:-1] if finish == "stop" and ids and ids[-1] in chat_format.stop_token_ids else ids
    text = chat_format.decode(body)
    count = len(ids)
    cut = first_stop(text, stops) if stops else None
    if cut is not None:  # OpenAI: the stop sequence itself is not returned; count the tokens up to it
        text, finish = text[:cut], "stop"
        lo, hi = 1, len(body)  # smallest k whose decoded prefix already contains a stop string
        while lo < hi:
            mid = (lo + hi) // 2
            if first_stop(chat_format.decode(body[:mid]), stops) is not None:
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


def token_usage(n_prompt: int, n_completion: int) -> dict:
    """OpenAI's ``usage``: prompt, completion and total tokens."""
    return {"prompt_tokens": n_prompt, "completion_tokens": n_completion, "total_tokens": n_prompt + n_completion}


def completion_body(completion_id: str, created: int, model: str, choices: list[dict], n_prompt: int,
                    n_completion: int) -> dict:
    """The body of a non-streamed ``chat.completion``."""
    return {"id": completion_id, "object": "chat.completion", "created": created, "model": model,
            "choices": choices, "usage": token_usage(n_prompt, n_completion), "system_fingerprint": None}


def chunk_choice(index: int, delta: dict, finish_reason: str | None = None) -> dict:
    """One choice of a streamed chunk: what ``delta`` adds to choice ``index``."""
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def completion_chunk(completion_id: str, created: int, model: str, choices: list[dict], *,
                     include_usage: bool = False, usage: dict | None = None) -> dict:
    """The body of one ``chat.completion.chunk`` event. With ``include_usage`` (the request's
    ``stream_options``) every chunk carries ``usage``: null, except on the last one."""
    body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": None, "choices": choices}
    if include_usage:
        body["usage"] = usage
    return body


def model_card(model_name: str, created: int) -> dict:
    """The served model as ``GET /v1/models`` lists it."""
    return {"id": model_name, "object": "model", "created": created, "owned_by": "agentrft"}
