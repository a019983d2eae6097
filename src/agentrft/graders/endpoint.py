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
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from typing import Any

import httpx

from agentrft.graders.base import OTHER_ERROR, Grader, GradingFailure
from agentrft.graders.spec import EndpointSpec

_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


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

    def __init__(self, spec: EndpointSpec, transport: httpx.BaseTransport | None = None):
        super().__init__(spec)
        self.reward_range = tuple(spec.range) if spec.range else None  # type: ignore[assignment]
        self.limiter = RateLimiter(spec.rate_limit_per_s)
        self._client = httpx.Client(timeout=spec.timeout, transport=transport)

    def score(self, sample: dict[str, Any], item: dict[str, Any]) -> float:
        body = {"sample": sample, "item": item, "trace_id": sample.get("trace_id") or uuid.uuid4().hex}
        headers = {k: expand_env(v) for k, v in self.spec.headers.items()}
        last = ""
        for attempt in range(self.spec.max_retries + 1):
            if attempt:
                time.sleep(self.spec.backoff_s * 2 ** (attempt - 1))
            self.limiter.wait()
            try:
                response = self._client.post(self.spec.url, json=body, headers=headers)
            except httpx.TimeoutException as e:
                last = f"timed out after {self.spec.timeout}s ({type(e).__name__})"
                continue
            except httpx.TransportError as e:
                last = f"transport error: {type(e).__name__}: {e}"
                continue
            if response.status_code in RETRY_STATUSES:
                last = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            if response.status_code >= 400:
                raise GradingFailure(OTHER_ERROR, f"HTTP {response.status_code}: {response.text[:200]}")
            return _read_score(response)
        raise GradingFailure(OTHER_ERROR, f"endpoint failed after {self.spec.max_retries + 1} attempt(s): {last}")


def _read_score(response: httpx.Response) -> float:
    try:
        data = response.json()
    except ValueError:
        raise GradingFailure(OTHER_ERROR, f"endpoint answered non-JSON: {response.text[:200]!r}") from None
    if not isinstance(data, dict) or "score" not in data:
        raise GradingFailure(OTHER_ERROR, f'endpoint answer has no "score": {str(data)[:200]}')
    score = data["score"]
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise GradingFailure(OTHER_ERROR, f"endpoint score is not a number: {score!r}")
    return float(score)
