"""The ``endpoint`` grader (agentrft extension): grading by an HTTP service.

Some rewards live in another system (a test harness, a database check, a
human-labelled cache). The grader POSTs ``{"sample", "item", "trace_id"}``
as JSON to ``url`` and expects ``{"score": <number>}`` back.

Failure handling follows the tool-transport rules: a timeout, connection
error, 429 or 5xx is retried up to ``max_retries`` times with exponential
backoff (``backoff_s * 2**attempt``); any other status is final. Requests
from one grader are spaced to at most ``rate_limit_per_s`` per second
(shared by all threads grading with it). OpenAI defines no error flag for
this grader type, so every failure -- transport, HTTP status, malformed
answer -- is ``other_error`` with the reason in the message. ``${NAME}`` in a
header value is replaced from the environment at call time.

Bounds (:mod:`agentrft.tools.http_limits`): ``timeout`` is a total deadline
for each attempt -- connect, headers and the whole body -- and the answer is
read up to :data:`MAX_REPLY_BYTES`; a longer answer is not read further and
is ``other_error`` at once (no retry: the service would send it again). The
exchange runs on an async client awaited from the grading thread, because
only cancellation stops a blocked read at the deadline.

Egress: ``egress`` (an :class:`~agentrft.trust.EgressPolicy`, trusted by
default) vets ``url`` when the grader is built -- a refused URL is
:class:`~agentrft.trust.EgressDenied` before any connection -- and again as
each request is sent.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from typing import Any

import httpx

from agentrft.graders.base import OTHER_ERROR, Grader, GradingFailure
from agentrft.graders.spec import EndpointSpec
from agentrft.tools.http_limits import LimitedAsyncClient, read_capped, run_blocking_http
from agentrft.trust import TRUSTED_EGRESS, EgressPolicy

_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_REPLY_BYTES = 1_000_000
"""Longest answer read from a grading service (``{"score": ...}`` needs a few bytes)."""


class RateLimiter:
    """Spaces calls at least ``1 / rate_per_s`` seconds apart (thread-safe)."""

    def __init__(self, rate_per_s: float | None):
        self.interval = 0.0 if not rate_per_s else 1.0 / rate_per_s
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


def expand_env(value: str) -> str:
    return _ENV_VAR.sub(lambda m: os.environ.get(m.group(1), ""), value)


class EndpointGrader(Grader):
    spec: EndpointSpec

    def __init__(self, spec: EndpointSpec, transport: httpx.AsyncBaseTransport | None = None,
                 egress: EgressPolicy = TRUSTED_EGRESS):
        super().__init__(spec)
        transport = egress.guard(spec.url, f"endpoint grader {spec.name!r}", transport)
        self.reward_range = tuple(spec.range) if spec.range else None  # type: ignore[assignment]
        self.limiter = RateLimiter(spec.rate_limit_per_s)
        self._client = LimitedAsyncClient(  # used on the HTTP loop only
            max_reply_bytes=MAX_REPLY_BYTES, timeout=spec.timeout, transport=transport
        )

    def score(self, sample: dict[str, Any], item: dict[str, Any]) -> float:
        body = {"sample": sample, "item": item, "trace_id": sample.get("trace_id") or uuid.uuid4().hex}
        headers = {k: expand_env(v) for k, v in self.spec.headers.items()}
        last = ""
        for attempt in range(self.spec.max_retries + 1):
            if attempt:
                time.sleep(self.spec.backoff_s * 2 ** (attempt - 1))
            self.limiter.wait()
            try:
                status, answer, complete = run_blocking_http(self._post(body, headers))
            except httpx.TimeoutException as e:
                last = f"timed out after {self.spec.timeout}s ({type(e).__name__}: {e})"
                continue
            except httpx.TransportError as e:
                last = f"transport error: {type(e).__name__}: {e}"
                continue
            text = answer.decode("utf-8", "replace")
            if not complete:
                raise GradingFailure(
                    OTHER_ERROR,
                    f"endpoint answer is longer than {MAX_REPLY_BYTES} bytes (HTTP {status}): {text[:200]!r}",
                )
            if status in RETRY_STATUSES:
                last = f"HTTP {status}: {text[:200]}"
                continue
            if status >= 400:
                raise GradingFailure(OTHER_ERROR, f"HTTP {status}: {text[:200]}")
            return _read_score(answer, text)
        raise GradingFailure(OTHER_ERROR, f"endpoint failed after {self.spec.max_retries + 1} attempt(s): {last}")

    async def _post(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, bytes, bool]:
        async with self._client.stream("POST", self.spec.url, json=body, headers=headers) as response:
            answer, complete = await read_capped(response, MAX_REPLY_BYTES)
        return response.status_code, answer, complete


def _read_score(answer: bytes, text: str) -> float:
    try:
        data = json.loads(answer)
    except ValueError:
        raise GradingFailure(OTHER_ERROR, f"endpoint answered non-JSON: {text[:200]!r}") from None
    if not isinstance(data, dict) or "score" not in data:
        raise GradingFailure(OTHER_ERROR, f'endpoint answer has no "score": {str(data)[:200]}')
    score = data["score"]
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise GradingFailure(OTHER_ERROR, f"endpoint score is not a number: {score!r}")
    return float(score)
