"""The served request log (opt-in, ``agentrft serve --request-log PATH``): one JSON line per request.

Each POST to the API (chat completions, completions, adapter loads) is appended to ``PATH`` when its response
ends: ``{time, method, path, status, latency_s, request, response}``, where ``request`` and ``response`` are the
bodies (parsed as JSON when they are). A streamed response is logged joined: its ``data:`` events collapsed into
one ``{"stream": true, "choices": [{"index", "content", "tool_calls", "finish_reason"}], "usage"}``, because a
redactor given each delta alone would miss an email split over two of them. Everything passes through the
:class:`~agentrft.privacy.Redactor` of ``--privacy``: ``full`` writes the bodies as they are, ``redacted`` with
each finding replaced by ``[REDACTED:<kind>]``, ``none`` writes no bodies at all (only the line's other fields
and the response's ``usage``). Unless ``full``, token ids and per-token logprobs (``/v1/completions``'
``prompt_token_ids``, chat ``logprobs``) are left out: token ids and token pieces spell the text out one token
at a time, past any detector.

Why a raw ASGI middleware and not FastAPI's ``@app.middleware("http")``: the latter buffers a streamed
response's iterator differently per Starlette version; wrapping ``send`` sees every body chunk as it goes out
and changes nothing of what the client receives. Bodies over :data:`MAX_LOGGED_BYTES` are cut (and marked).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from agentrft.privacy import Redactor

MAX_LOGGED_BYTES = 1 << 20
"""Most bytes of one request or response body kept in the log."""
_TOKEN_KEYS = ("prompt_token_ids", "token_ids", "tokens", "prompt", "bytes")
"""Body keys that may hold token ids (a ``prompt`` may be a list of them; ``bytes`` are a token's UTF-8)."""
_PER_TOKEN_KEYS = ("logprobs",)
"""Body keys holding the text token by token (chat ``logprobs.content[].token``, completions' ``tokens``)."""


class RequestLog:
    """ASGI middleware appending each POST's request and response to a JSONL file through a redactor."""

    def __init__(self, app: Any, path: str | os.PathLike[str], privacy: Redactor) -> None:
        self.app, self.path, self.privacy = app, Path(path), privacy
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.failures = 0
        """Lines that could not be written (a full disk, an unwritable file); the first is said on stderr."""

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        request, response, status = bytearray(), bytearray(), {"code": None}
        t0 = time.perf_counter()

        async def receive_logged() -> dict:
            message = await receive()
            if message["type"] == "http.request" and len(request) < MAX_LOGGED_BYTES:
                request.extend(message.get("body", b""))
            return message

        async def send_logged(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            elif message["type"] == "http.response.body" and len(response) < MAX_LOGGED_BYTES:
                response.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive_logged, send_logged)
        finally:
            self.write(scope, status["code"], time.perf_counter() - t0, bytes(request), bytes(response))

    def write(self, scope: dict, status: int | None, latency_s: float, request: bytes, response: bytes) -> None:
        """Append one line (never raises: a full disk must not fail the request that was already answered)."""
        line = {"time": time.time(), "method": scope.get("method"), "path": scope.get("path"), "status": status,
                "latency_s": round(latency_s, 6), **self._bodies(request, response)}
        try:
            text = json.dumps(line, ensure_ascii=False) + "\n"
            with self._lock, open(self.path, "a", encoding="utf-8") as f:
                f.write(text)
        except (OSError, TypeError, ValueError) as e:
            self.failures += 1
            if self.failures == 1:  # said once on the server's log; counted on the object for health checks
                print(f"agentrft serve: the request log {self.path} cannot be written ({type(e).__name__}: {e}); "
                      "requests are answered but not logged", file=sys.stderr, flush=True)

    def _bodies(self, request: bytes, response: bytes) -> dict[str, Any]:
        req, resp = _parsed(request), _parsed(response)
        if self.privacy.store == "none":
            usage = resp.get("usage") if isinstance(resp, dict) else None
            return {"usage": usage} if usage is not None else {}
        if self.privacy.redacts:
            req, resp = _without_token_ids(req), _without_token_ids(resp)
        return {"request": self.privacy.written(req), "response": self.privacy.written(resp)}


def _parsed(body: bytes) -> Any:
    """A body as JSON, a streamed one as the list of its ``data:`` events, else as text."""
    text = body[:MAX_LOGGED_BYTES].decode("utf-8", errors="replace")
    cut = {"truncated": True} if len(body) >= MAX_LOGGED_BYTES else {}
    try:
        value = json.loads(text)
        return {**value, **cut} if isinstance(value, dict) else value
    except ValueError:
        pass
    events = [ln[len("data:"):].strip() for ln in text.splitlines() if ln.startswith("data:")]
    if events:
        return {**_joined_stream(events), **cut}
    return {"text": text, **cut} if text else None


def _joined_stream(events: list[str]) -> dict[str, Any]:
    """A streamed response's chunks as one response: each choice's text and tool calls joined."""
    choices: dict[int, dict[str, Any]] = {}
    out: dict[str, Any] = {"stream": True}
    for ev in events:
        try:
            chunk = json.loads(ev)
        except ValueError:
            continue  # "[DONE]"
        if not isinstance(chunk, dict):
            continue
        for key in ("id", "model", "usage", "error"):
            if chunk.get(key) is not None:
                out[key] = chunk[key]
        for c in chunk.get("choices") or []:
            choice = choices.setdefault(int(c.get("index", 0)), {"index": int(c.get("index", 0)), "content": ""})
            delta = c.get("delta") or {}
            choice["content"] += delta.get("content") or c.get("text") or ""
            for call in delta.get("tool_calls") or []:
                calls = choice.setdefault("tool_calls", {})
                joined = calls.setdefault(int(call.get("index", 0)), {"id": None, "name": "", "arguments": ""})
                fn = call.get("function") or {}
                joined["id"] = call.get("id") or joined["id"]
                joined["name"] += fn.get("name") or ""
                joined["arguments"] += fn.get("arguments") or ""
            if c.get("logprobs"):
                choice.setdefault("logprobs", []).append(c["logprobs"])
            if c.get("finish_reason"):
                choice["finish_reason"] = c["finish_reason"]
    for choice in choices.values():
        if "tool_calls" in choice:
            choice["tool_calls"] = [choice["tool_calls"][i] for i in sorted(choice["tool_calls"])]
    out["choices"] = [choices[i] for i in sorted(choices)]
    return out


def _without_token_ids(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: ("[REDACTED:token_ids]" if (k in _TOKEN_KEYS and _has_ints(v)) or (k in _PER_TOKEN_KEYS and v)
                    else _without_token_ids(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_without_token_ids(v) for v in obj]
    return obj


def _has_ints(value: Any) -> bool:
    return isinstance(value, list) and any(isinstance(v, int) or _has_ints(v) for v in value)


def add_request_log(app: Any, path: str | os.PathLike[str], privacy: str | Redactor = "redacted") -> None:
    """Log ``app``'s POST requests and responses to ``path`` (JSONL) through ``privacy`` (a ``privacy.store``
    value or a :class:`~agentrft.privacy.Redactor`). Call before the app starts."""
    redactor = privacy if isinstance(privacy, Redactor) else Redactor(privacy)
    app.add_middleware(RequestLog, path=path, privacy=redactor)


__all__ = ["MAX_LOGGED_BYTES", "RequestLog", "add_request_log"]
