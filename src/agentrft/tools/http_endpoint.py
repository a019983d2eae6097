"""HTTP tool endpoints in OpenAI's Agent RFT wire format.

Users who trained with OpenAI's hosted Agent RFT already run a tool server:
for every tool call the trainer POSTs one JSON object to the tool's
``server_url`` and the server answers with the tool output. This module speaks
exactly that format, so such a server works here unchanged::

    request   {"type": "function_call", "name": "lookup", "arguments": "{\\"q\\": 1}",
               "call_id": "call_...", "id": "fc_...", "item": {<task row>},
               "trace_id": "<same for every call of one rollout>"}
    response  {"type": "function_call_output", "call_id": "call_...", "id": "fc_...",
               "output": "<text shown to the model>"}

The tools are *declared* in the job config (:class:`EndpointToolConfig`:
name, server_url, headers and transport knobs) and their *schemas* come from
each task row's ``tools`` — the same split as the hosted product, so a row can
carry per-task tool descriptions.

Failure policy (a bad rollout is data, never a crash; see ``docs/architecture.md``):

* HTTP 4xx (except 408/429) — the server rejected *this call*: the body text
  becomes a ``TOOL_ERROR`` shown to the model, which can correct itself.
* HTTP 5xx, 408, 429, connection errors and timeouts — retried
  (``max_retries``, exponential backoff with jitter); once retries are spent
  a ``ToolFailure(INFRASTRUCTURE)``: the rollout loop ends the rollout as an
  infrastructure failure and it is excluded from advantages, because the
  model did nothing wrong.
* A reply that is not the wire format (not JSON, wrong ``type``, no string
  ``output``, wrong ``call_id``) — ``INFRASTRUCTURE`` at once (a broken server
  does not fix itself on retry), with a message saying what was wrong.
* Outputs over ``max_output_bytes`` (1 MB) are cut, ending with
  ``[truncated: N bytes omitted]``.

Bounds (:mod:`agentrft.tools.http_limits`): ``timeout_s`` is a total deadline
for each request -- connect, headers and the whole body -- so a server that
trickles its reply or stalls after the headers cannot hold a call past it
(the attempt times out and is retried like a 5xx). The reply is streamed and
read up to :func:`reply_limit` bytes (``3 * max_output_bytes + 64 KiB``: room
for a ``max_output_bytes`` output of non-ASCII text sent as ``\\uXXXX``
escapes); nothing past that is read. The ``output`` string is recovered from
what was read, cut to ``max_output_bytes`` and ends with ``[truncated: the
reply was over N bytes; the rest was not read]``; a prefix with no
``output`` string in it is a malformed reply.

One :class:`EndpointClient` per ``server_url`` holds a pooled
``httpx.AsyncClient``, a concurrency limit (semaphore) and a rate limit
(token bucket), shared by every rollout, plus call statistics. The client is
created lazily on the tools background loop (:func:`agentrft.tools.base.background_loop`)
because httpx connection pools are bound to the loop that made them; calls
arriving from any other loop are forwarded there.

Egress: ``egress`` (an :class:`~agentrft.trust.EgressPolicy`, trusted by
default; ``endpoint_clients(configs, egress=...)`` passes it on) vets
``server_url`` when its :class:`EndpointClient` is built -- a refused URL is
:class:`~agentrft.trust.EgressDenied` before any connection -- and again as
each request is sent.

The request ``id`` ("fc_...") is fresh for every tool call and kept across the
retries of that call, so a server can use it to de-duplicate a retried request.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Awaitable, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentrft.errors import ConfigError, ToolDefinitionError
from agentrft.tools.base import Tool, ToolContext, ToolFailure, background_loop
from agentrft.tools.http_limits import MAX_REPLY_BYTES_EXTENSION, LimitedAsyncClient, read_capped
from agentrft.trust import TRUSTED_EGRESS, EgressPolicy
from agentrft.types import TaskRow, ToolErrorKind

T = TypeVar("T")

MAX_OUTPUT_BYTES = 1_000_000
RETRYABLE_4XX = frozenset({408, 429})  # request timeout / too many requests: the server's state, not the call's

__all__ = [
    "EndpointClient",
    "EndpointStats",
    "EndpointToolConfig",
    "HttpEndpointTool",
    "endpoint_clients",
    "endpoint_tools_for_row",
    "expand_env_vars",
    "function_schema_name",
    "normalize_function_schema",
    "on_background_loop",
    "reply_limit",
    "truncate_output",
]


# -- config -------------------------------------------------------------------
class EndpointToolConfig(BaseModel):
    """One tool served by an HTTP endpoint speaking the Agent RFT wire format."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    """Tool name; must match a function schema in each task row's ``tools``."""
    server_url: str
    """URL the calls are POSTed to (http or https)."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra request headers (e.g. ``Authorization``). ``${VAR}`` is replaced by the environment variable."""
    timeout_s: float = Field(30.0, gt=0)
    """Total deadline of each request (connect, headers and the whole body); a timeout is retried like a 5xx."""
    max_retries: int = Field(3, ge=0)
    """Retries after the first attempt for 5xx / 408 / 429 / connection errors / timeouts."""
    backoff_base_s: float = Field(0.5, ge=0)
    """Backoff before retry k (k = 0, 1, ...) is drawn from [d/2, d] with d = min(backoff_max_s, base * 2**k)."""
    backoff_max_s: float = Field(8.0, ge=0)
    max_output_bytes: int = Field(MAX_OUTPUT_BYTES, ge=1)
    """Outputs longer than this (UTF-8 bytes) are truncated with a marker; replies are read up to
    ``reply_limit(max_output_bytes)`` bytes."""
    max_concurrency: int = Field(32, ge=1)
    """Per endpoint (server_url): requests in flight at once. Tools sharing a URL must agree."""
    rate_limit_per_s: float | None = Field(None, gt=0)
    """Per endpoint (server_url): request starts per second (token bucket, burst 1). None = unlimited."""

    @field_validator("server_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"server_url must be an http:// or https:// URL, got {v!r}")
        return v

    def resolved_headers(self) -> dict[str, str]:
        """Headers with ``${VAR}`` replaced from the environment (secrets stay out of config files)."""
        return expand_env_vars(self.headers, f"endpoint tool {self.name!r}")


# -- helpers shared with the MCP tools ------------------------------------------
def expand_env_vars(values: Mapping[str, str], owner: str) -> dict[str, str]:
    """Replace ``${VAR}`` in each value from the environment; an unset variable is a :class:`ConfigError`."""

    def sub(m: re.Match[str]) -> str:
        var = m.group(1)
        if var not in os.environ:
            raise ConfigError(f"{owner}: ${{{var}}} is used but the environment variable {var} is not set")
        return os.environ[var]

    return {k: re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", sub, v) for k, v in values.items()}


async def on_background_loop(coro: Awaitable[T]) -> T:
    """Await ``coro`` on the tools background loop, wherever the caller runs.

    Loop-bound resources (httpx pools, MCP sessions) live on that loop; a
    caller on another loop (a test, a notebook) is forwarded there.
    Cancelling the caller cancels the forwarded coroutine.
    """
    loop = background_loop()
    if asyncio.get_running_loop() is loop:
        return await coro
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))  # type: ignore[arg-type]


def reply_limit(max_output_bytes: int = MAX_OUTPUT_BYTES) -> int:
    """Bytes of a reply read at most: room for ``max_output_bytes`` of output sent as ``\\uXXXX`` escapes.

    A non-ASCII character is 2 to 4 UTF-8 bytes and at most 12 escaped, so 3x
    holds; only an output of ASCII control characters (1 byte, 6 escaped) is
    cut shorter than ``max_output_bytes``.
    """
    return 3 * max_output_bytes + 65_536


def truncate_output(text: str, max_bytes: int = MAX_OUTPUT_BYTES) -> str:
    """Cut ``text`` to ``max_bytes`` UTF-8 bytes, ending with ``[truncated: N bytes omitted]``."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    kept = data[:max_bytes].decode("utf-8", errors="ignore")  # never split a character
    omitted = len(data) - len(kept.encode("utf-8"))
    return f"{kept}\n[truncated: {omitted} bytes omitted]"


def function_schema_name(schema: Mapping[str, Any]) -> str | None:
    """Name of an OpenAI function schema in chat (``{"function": {...}}``) or Responses (flat) shape."""
    fn = schema.get("function", schema)
    name = fn.get("name") if isinstance(fn, Mapping) else None
    return name if isinstance(name, str) else None


def normalize_function_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Chat-completions shape ``{"type": "function", "function": {name, description, parameters}}``."""
    fn = dict(schema["function"]) if "function" in schema else {k: v for k, v in schema.items() if k != "type"}
    fn.setdefault("parameters", {"type": "object", "properties": {}})
    return {"type": "function", "function": fn}


# -- the per-endpoint client ----------------------------------------------------
@dataclass
class EndpointStats:
    """Counters for one endpoint. ``calls`` are tool calls; ``requests`` include retries."""

    calls: int = 0
    requests: int = 0
    retries: int = 0
    failures: int = 0  # calls that ended INFRASTRUCTURE
    tool_errors: int = 0  # calls answered 4xx
    in_flight: int = 0
    max_in_flight: int = 0
    latency_total_s: float = 0.0
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))  # per call, incl. retries

    def snapshot(self) -> dict[str, float]:
        lat = sorted(self.latencies_s)

        def pct(q: float) -> float:
            return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else 0.0

        return {
            "calls": self.calls,
            "requests": self.requests,
            "retries": self.retries,
            "failures": self.failures,
            "tool_errors": self.tool_errors,
            "max_in_flight": self.max_in_flight,
            "latency_mean_s": self.latency_total_s / self.calls if self.calls else 0.0,
            "latency_p50_s": pct(0.5),
            "latency_p95_s": pct(0.95),
        }


class _TokenBucket:
    """At most ``rate`` acquisitions per second, bursts of ``burst``; waiters queue in order."""

    def __init__(self, rate: float, burst: int = 1):
        self.rate, self.burst = rate, burst
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens < 1.0:
                await asyncio.sleep((1.0 - self._tokens) / self.rate)
                self._tokens, self._stamp = 1.0, time.monotonic()
            self._tokens -= 1.0


class _Retryable(Exception):
    """An attempt failed in a way a retry may fix."""


class EndpointClient:
    """Pooled, limited transport to one Agent RFT tool server; shared by all rollouts.

    ``transport`` replaces the network (e.g. ``httpx.MockTransport``) in tests.
    """

    def __init__(
        self,
        server_url: str,
        *,
        max_concurrency: int = 32,
        rate_limit_per_s: float | None = None,
        max_connections: int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        egress: EgressPolicy = TRUSTED_EGRESS,
    ):
        transport = egress.guard(server_url, "HTTP tool endpoint", transport)
        self.server_url = server_url
        self.max_concurrency = max_concurrency
        self.rate_limit_per_s = rate_limit_per_s
        self.max_connections = max_connections or max_concurrency
        self.stats = EndpointStats()
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._bucket: _TokenBucket | None = None

    @classmethod
    def from_config(cls, config: EndpointToolConfig, **kwargs: Any) -> "EndpointClient":
        return cls(
            config.server_url, max_concurrency=config.max_concurrency, rate_limit_per_s=config.rate_limit_per_s, **kwargs
        )

    def _ensure_started(self) -> httpx.AsyncClient:
        # Runs on the background loop only (see on_background_loop): the pool,
        # semaphore and lock are bound to it for the life of the client.
        if self._http is None:
            limits = httpx.Limits(max_connections=self.max_connections, max_keepalive_connections=self.max_connections)
            self._http = LimitedAsyncClient(limits=limits, transport=self._transport)
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
            if self.rate_limit_per_s:
                self._bucket = _TokenBucket(self.rate_limit_per_s)
        return self._http

    async def call(
        self,
        payload: dict[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 30.0,
        max_retries: int = 3,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
    ) -> dict[str, Any]:
        """POST one wire-format request; return the decoded ``function_call_output``.

        Each attempt ends within ``timeout_s``. A reply over :func:`reply_limit`
        bytes is not read further: its ``output`` is what was read, cut to
        ``max_output_bytes`` and ending with a truncation marker.
        Raises :class:`ToolFailure` (``TOOL_ERROR`` for 4xx, ``INFRASTRUCTURE``
        once retries are spent or the reply is malformed).
        """
        return await on_background_loop(
            self._call(payload, dict(headers or {}), timeout_s, max_retries, backoff_base_s, backoff_max_s,
                       max_output_bytes)
        )

    async def _call(
        self,
        payload: dict[str, Any],
        headers: dict[str, str],
        timeout_s: float,
        max_retries: int,
        backoff_base_s: float,
        backoff_max_s: float,
        max_output_bytes: int,
    ) -> dict[str, Any]:
        self._ensure_started()
        stats = self.stats
        stats.calls += 1
        t0 = time.perf_counter()
        last_problem = ""
        try:
            for attempt in range(max_retries + 1):
                if attempt:
                    stats.retries += 1
                    delay = min(backoff_max_s, backoff_base_s * 2 ** (attempt - 1))
                    await asyncio.sleep(random.uniform(delay / 2, delay))
                try:
                    return await self._attempt(payload, headers, timeout_s, max_output_bytes)
                except _Retryable as e:
                    last_problem = str(e)
            raise ToolFailure(
                ToolErrorKind.INFRASTRUCTURE,
                f"tool endpoint {self.server_url} failed after {max_retries + 1} attempts: {last_problem}",
            )
        except ToolFailure as e:
            if e.kind == ToolErrorKind.TOOL_ERROR:
                stats.tool_errors += 1
            else:
                stats.failures += 1
            raise
        finally:
            dt = time.perf_counter() - t0
            stats.latency_total_s += dt
            stats.latencies_s.append(dt)

    async def _attempt(
        self, payload: dict[str, Any], headers: dict[str, str], timeout_s: float, max_output_bytes: int
    ) -> dict[str, Any]:
        assert self._http is not None and self._semaphore is not None
        cap = reply_limit(max_output_bytes)
        async with self._semaphore:
            if self._bucket is not None:
                await self._bucket.acquire()
            self.stats.requests += 1
            self.stats.in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
            try:
                async with self._http.stream(
                    "POST", self.server_url, json=payload, headers=headers, timeout=timeout_s,
                    extensions={MAX_REPLY_BYTES_EXTENSION: cap},
                ) as resp:
                    body, complete = await read_capped(resp, cap)
            except httpx.TimeoutException as e:
                raise _Retryable(f"timed out after {timeout_s:g}s ({type(e).__name__}: {e})") from e
            except httpx.TransportError as e:
                raise _Retryable(f"{type(e).__name__}: {e}") from e
            finally:
                self.stats.in_flight -= 1
        status = resp.status_code
        if status >= 500 or status in RETRYABLE_4XX:
            raise _Retryable(f"HTTP {status}: {_short(body)}")
        if status >= 400:
            text = body[: max_output_bytes + 4].decode(resp.encoding or "utf-8", errors="replace")
            raise ToolFailure(ToolErrorKind.TOOL_ERROR, truncate_output(text, max_output_bytes) or
                              f"HTTP {status} {resp.reason_phrase}")
        if not complete:
            return self._decode_prefix(body, status, payload, cap, max_output_bytes)
        return self._decode(body, status, payload)

    def _malformed(self, status: int, problem: str) -> ToolFailure:
        return ToolFailure(
            ToolErrorKind.INFRASTRUCTURE,
            f"tool endpoint {self.server_url} sent a malformed reply (HTTP {status}): {problem}; "
            f'expected {{"type": "function_call_output", "call_id": ..., "output": "<string>"}}',
        )

    def _decode(self, raw: bytes, status: int, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            body = json.loads(raw)
        except ValueError:
            raise self._malformed(status, f"not JSON: {_short(raw)!r}") from None
        if not isinstance(body, dict):
            raise self._malformed(status, f"a JSON {type(body).__name__}, not an object")
        if body.get("type") != "function_call_output":
            raise self._malformed(status, f"type is {body.get('type')!r}")
        if "output" not in body:
            raise self._malformed(status, "no 'output' field")
        if not isinstance(body["output"], str):
            raise self._malformed(status, f"'output' is a {type(body['output']).__name__}, not a string")
        if body.get("call_id") not in (None, payload["call_id"]):
            raise self._malformed(
                status, f"call_id {body['call_id']!r} does not match the request's {payload['call_id']!r}"
            )
        return body

    def _decode_prefix(
        self, raw: bytes, status: int, payload: dict[str, Any], cap: int, max_output_bytes: int
    ) -> dict[str, Any]:
        """The reply of a body cut at ``cap`` bytes: its ``output`` as far as it was read, marked as cut."""
        start = re.match(rb'\s*\{.*?"output"\s*:\s*"', raw, re.S)
        if start is None:
            raise self._malformed(status, f"over {cap} bytes and no 'output' string in them: {_short(raw)!r}")
        kind = re.search(rb'"type"\s*:\s*"([^"\\]*)"', start.group())
        if kind is not None and kind.group(1) != b"function_call_output":
            raise self._malformed(status, f"type is {kind.group(1).decode('utf-8', 'replace')!r}")
        escaped = _JSON_STRING_BODY.match(raw, start.end()).group()  # the string as far as it was read
        output = json.loads(b'"' + escaped.decode("utf-8", "ignore").encode() + b'"')
        marker = f"\n[truncated: the reply was over {cap} bytes; the rest was not read]"
        kept = output[:max_output_bytes].encode("utf-8", "surrogatepass")[: max(0, max_output_bytes - len(marker))]
        return {"type": "function_call_output", "call_id": payload["call_id"],
                "output": kept.decode("utf-8", "ignore") + marker}

    async def aclose(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            await on_background_loop(http.aclose())


_JSON_STRING_BODY = re.compile(rb'[^"\\]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\]*)*')


def _short(text: str | bytes, limit: int = 500) -> str:
    if isinstance(text, bytes):
        text = text[: limit * 4].decode("utf-8", "replace")
    return text if len(text) <= limit else text[:limit] + "..."


# -- the tool ---------------------------------------------------------------------
class HttpEndpointTool:
    """A :class:`~agentrft.tools.base.Tool` whose calls are POSTed to an Agent RFT tool server."""

    has_implementation = True

    def __init__(self, config: EndpointToolConfig, schema: Mapping[str, Any], client: EndpointClient):
        schema_name = function_schema_name(schema)
        if schema_name != config.name:
            raise ToolDefinitionError(f"endpoint tool {config.name!r} was given the schema of {schema_name!r}")
        if client.server_url != config.server_url:
            raise ToolDefinitionError(
                f"endpoint tool {config.name!r} targets {config.server_url} but its client is for {client.server_url}"
            )
        self.name = config.name
        self.config = config
        self.client = client
        self._schema = normalize_function_schema(schema)
        self._headers = config.resolved_headers()

    def schema(self) -> dict[str, Any]:
        return self._schema

    def request_payload(self, arguments: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        """The exact JSON body sent for one call (a fresh ``id`` each time)."""
        return {
            "type": "function_call",
            "name": self.name,
            "arguments": json.dumps(arguments, ensure_ascii=False),
            "call_id": ctx.call_id,
            "id": "fc_" + uuid.uuid4().hex,
            "item": ctx.item,
            "trace_id": ctx.trace_id,
        }

    async def acall(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        c = self.config
        reply = await self.client.call(
            self.request_payload(arguments, ctx),
            headers=self._headers,
            timeout_s=c.timeout_s,
            max_retries=c.max_retries,
            backoff_base_s=c.backoff_base_s,
            backoff_max_s=c.backoff_max_s,
            max_output_bytes=c.max_output_bytes,
        )
        return truncate_output(reply["output"], c.max_output_bytes)

    def __repr__(self) -> str:
        return f"HttpEndpointTool({self.name!r} -> {self.config.server_url})"


def endpoint_clients(configs: Sequence[EndpointToolConfig], **kwargs: Any) -> dict[str, EndpointClient]:
    """One :class:`EndpointClient` per distinct ``server_url`` (create once per run, share across rollouts).

    Tools sharing a URL share its limits, so they must declare the same
    ``max_concurrency`` and ``rate_limit_per_s``.
    """
    clients: dict[str, EndpointClient] = {}
    first: dict[str, EndpointToolConfig] = {}
    for c in configs:
        if c.server_url not in clients:
            clients[c.server_url] = EndpointClient.from_config(c, **kwargs)
            first[c.server_url] = c
            continue
        f = first[c.server_url]
        if (f.max_concurrency, f.rate_limit_per_s) != (c.max_concurrency, c.rate_limit_per_s):
            raise ConfigError(
                f"endpoint tools {f.name!r} and {c.name!r} share {c.server_url} but declare different limits "
                f"(max_concurrency {f.max_concurrency} vs {c.max_concurrency}, "
                f"rate_limit_per_s {f.rate_limit_per_s} vs {c.rate_limit_per_s})"
            )
    return clients


def endpoint_tools_for_row(
    configs: Sequence[EndpointToolConfig], row: TaskRow, clients: Mapping[str, EndpointClient]
) -> list[Tool]:
    """The declared endpoint tools, each with its schema taken from ``row["tools"]``.

    Row tools that are not declared endpoints are left to other tool sources
    (environment methods, schema-only tools). A declared tool the row has no
    schema for is an error: the model could never call it.
    """
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"endpoint tools declared more than once: {dupes}")
    schemas = {function_schema_name(s): s for s in row.get("tools") or [] if isinstance(s, Mapping)}
    row_label = f" {row['id']!r}" if "id" in row else ""
    tools: list[Tool] = []
    for c in configs:
        if c.name not in schemas:
            available = sorted(n for n in schemas if n)
            raise ToolDefinitionError(
                f"endpoint tool {c.name!r} is declared in the config but the task row{row_label} "
                f"has no schema for it in 'tools' (the row's tools: {available})"
            )
        if c.server_url not in clients:
            raise ConfigError(f"no EndpointClient for {c.server_url} (build them with endpoint_clients(configs))")
        tools.append(HttpEndpointTool(c, schemas[c.name], clients[c.server_url]))
    return tools
