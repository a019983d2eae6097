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

Every malformed body is a 4xx: the body is decoded by :func:`parse_json_body`
(invalid UTF-8, invalid JSON and nesting deeper than the JSON decoder's
recursion limit are 400s), and the shape of each message (``role``,
``content`` and its parts, ``name``, ``tool_call_id``, assistant
``tool_calls``) and each tool schema is checked before anything renders it.
Error messages are clipped to :data:`MAX_ERROR_MESSAGE` characters, so a
refused megabyte of input is not echoed back.

The response builders (:func:`completion_choice`, :func:`completion_body`,
:func:`completion_chunk`, :func:`chunk_choice`) are the one place each OpenAI
body is shaped, for plain and streamed answers alike. Nothing here depends on
the web framework.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NoReturn, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentrft.models.chat_format import message_tool_calls, normalize_tool_schema
from agentrft.rollout.episode import normalize_messages
from agentrft.rollout.sampler import Completion

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_STOP_STRINGS = 4
MAX_ERROR_MESSAGE = 1000


class APIError(Exception):
    """A request the server refuses; rendered as OpenAI's error JSON ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        if len(message) > MAX_ERROR_MESSAGE:
            message = message[:MAX_ERROR_MESSAGE] + " ..."
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers
        """Response headers (``Retry-After`` on a 429)."""

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
    max_request_bytes: int = 8 * 1024 * 1024
    """Largest request body accepted; a larger one is a 413, refused from its ``Content-Length`` before it is
    read, or as soon as that many bytes have arrived when it has none."""
    max_queued_requests: int = 64
    """Most chat completion requests held before decoding (being read, rendered, or waiting for the sampler);
    one more is a 429 with ``Retry-After``. The batch being decoded does not count."""


def byte_size(n: int) -> str:
    """``n`` bytes for a message: "8 MiB", "64 KiB", "100 bytes"."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


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


def parse_json_body(raw: bytes | bytearray) -> Any:
    """The request body decoded; a 400 for invalid UTF-8 or JSON, and for nesting too deep to decode."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise APIError(400, "the request body is nested too deeply") from None
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        raise APIError(400, "the request body is not valid JSON") from None


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
        _check_message(f"messages[{i}]", m)
        if m["role"] == "assistant":
            try:
                message_tool_calls(m)
            except (ValueError, RecursionError) as e:  # arguments: not JSON, not an object, nested too deep
                raise APIError(400, f"messages[{i}].tool_calls: {e}", param=f"messages[{i}].tool_calls") from None
    tools = None
    if req.tools:
        tools = []
        for j, t in enumerate(req.tools):
            try:
                schema = normalize_tool_schema(t)
            except ValueError as e:
                raise APIError(400, f"tools[{j}]: {e}", param=f"tools[{j}]") from None
            _check_tool_schema(f"tools[{j}]", schema)
            tools.append(schema)
    return normalize_messages(req.messages), tools


def _refuse(where: str, why: str) -> NoReturn:
    raise APIError(400, f"{where} {why}", param=where)


def _check_message(where: str, m: dict) -> None:
    """The shape of one message, as the renderers rely on it."""
    role = m.get("role")
    if not isinstance(role, str) or role not in ROLES:
        _refuse(f"{where}.role", f"must be one of {', '.join(ROLES)}; got {role!r:.100}")
    content = m.get("content")
    if isinstance(content, list):
        for k, part in enumerate(content):
            if isinstance(part, str):
                continue
            is_text = isinstance(part, dict) and part.get("type", "text") == "text"
            if not (is_text and isinstance(part.get("text"), str)):
                _refuse(f"{where}.content[{k}]", 'must be a text part ({"type": "text", "text": "..."}): only text '
                                                 "content is supported")
    elif content is not None and not isinstance(content, str):
        _refuse(f"{where}.content", f"must be a string, a list of text parts or null; got {type(content).__name__}")
    for key in ("name", "tool_call_id"):
        if m.get(key) is not None and not isinstance(m[key], str):
            _refuse(f"{where}.{key}", f"must be a string; got {type(m[key]).__name__}")
    calls = m.get("tool_calls")
    if calls and role != "assistant":
        _refuse(f"{where}.tool_calls", "is only allowed on assistant messages")
    if calls is not None:
        if not isinstance(calls, list):
            _refuse(f"{where}.tool_calls", f"must be a list of tool calls; got {type(calls).__name__}")
        for k, call in enumerate(calls):
            _check_tool_call(f"{where}.tool_calls[{k}]", call)
    if role == "tool" and not m.get("tool_call_id"):
        _refuse(f"{where}.tool_call_id", "is required on a tool message")


def _check_tool_call(where: str, call: Any) -> None:
    """``{"id": str, "type": "function", "function": {"name": str, "arguments": str}}`` (id and type optional;
    arguments may also be the decoded object)."""
    if not isinstance(call, dict):
        _refuse(where, f'must be an object {{"type": "function", "function": {{...}}}}; got {type(call).__name__}')
    if call.get("type", "function") != "function":
        _refuse(f"{where}.type", 'must be "function"')
    if call.get("id") is not None and not isinstance(call["id"], str):
        _refuse(f"{where}.id", "must be a string")
    fn = call.get("function")
    if not isinstance(fn, dict):
        _refuse(f"{where}.function", 'must be an object {"name": ..., "arguments": ...}')
    if not isinstance(fn.get("name"), str) or not fn["name"]:
        _refuse(f"{where}.function.name", "must be a non-empty string")
    if not isinstance(fn.get("arguments", ""), (str, dict)):
        _refuse(f"{where}.function.arguments", "must be a string holding a JSON object")


def _check_tool_schema(where: str, schema: dict) -> None:
    """``{"type": "function", "function": {"name": str, "description": str, "parameters": {...}}}``."""
    fn = schema.get("function")
    if schema.get("type", "function") != "function" or not isinstance(fn, dict) or not fn.get("name"):
        _refuse(where, 'must be {"type": "function", "function": {"name": ...}}')
    if not isinstance(fn["name"], str):
        _refuse(f"{where}.function.name", "must be a string")
    if fn.get("description") is not None and not isinstance(fn["description"], str):
        _refuse(f"{where}.function.description", "must be a string")
    if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
        _refuse(f"{where}.function.parameters", "must be a JSON schema object")


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
