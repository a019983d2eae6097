"""Bounds on HTTP exchanges with servers agentrft does not control: a total deadline and a reply-size cap.

Why: httpx's ``timeout`` bounds each network operation, not the exchange,
and a response is read whole before anyone looks at its size. A tool server,
grading service or judge that trickles one byte every half second never
trips a 30 s read timeout, and one that streams an endless body fills memory
until the process dies. Every HTTP client that talks to such a server (tool
endpoints, the ``endpoint`` grader, ``score_model``/``label_model`` judges)
is a :class:`LimitedAsyncClient`:

* **total deadline** -- the request's timeout (httpx's ``timeout=``: the
  largest of its connect/read/write/pool values) bounds the whole exchange:
  connect, the headers and every read of the body. Past it the pending read
  is cancelled, the connection closed and ``httpx.ReadTimeout`` raised, so a
  call ends at its deadline whatever the server does.
* **size cap** -- at most ``max_reply_bytes`` of body (per client, or per
  request with the :data:`MAX_REPLY_BYTES_EXTENSION` request extension) are
  passed on; the read after that raises :class:`ReplyTooLarge`. A reader
  that wants what came before the cap uses :func:`read_capped`.
* **compression** -- requests ask for ``Accept-Encoding: identity``; a gzip or
  deflate reply is decoded here, the cap counting decoded bytes (one 64 KiB
  gzip chunk can inflate to 64 MiB); any other encoding is refused.

It is a client rather than a transport so that everything else httpx does
(proxies from the environment, TLS, connection limits, test transports such
as ``httpx.MockTransport``) is unchanged; the public ``send`` that every
request goes through -- ``post``, ``stream`` and the openai SDK alike -- adds
the bounds. agentrft's clients leave redirects off (httpx's default):
following one, httpx reads the redirect's body whole, inside the deadline
but outside the size cap.

Synchronous callers (graders run in worker threads) await the async clients
on one private event loop with :func:`run_blocking_http`, since only
cancellation can stop a blocked socket read on time.
"""

from __future__ import annotations

import asyncio
import threading
import zlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import httpx

__all__ = [
    "MAX_REPLY_BYTES_EXTENSION",
    "LimitedAsyncClient",
    "ReplyTooLarge",
    "read_capped",
    "run_blocking_http",
    "total_timeout",
]

T = TypeVar("T")

MAX_REPLY_BYTES_EXTENSION = "agentrft.max_reply_bytes"
"""Request extension that sets the size cap of one request (overrides the client's)."""


class ReplyTooLarge(httpx.TransportError):
    """The reply's body is longer than the cap; the rest was not read."""


def total_timeout(request: httpx.Request) -> float | None:
    """The request's deadline in seconds: the largest of the timeouts httpx put on it (None: no deadline)."""
    values = [v for v in (request.extensions.get("timeout") or {}).values() if v is not None]
    return max(values) if values else None


class LimitedAsyncClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` whose every exchange has a total deadline and a size cap.

    ``max_reply_bytes=None`` leaves the size to each request's
    :data:`MAX_REPLY_BYTES_EXTENSION` (uncapped without one); every other
    argument is ``httpx.AsyncClient``'s.
    """

    def __init__(self, *, max_reply_bytes: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.max_reply_bytes = max_reply_bytes

    async def send(self, request: httpx.Request, *, stream: bool = False, **kwargs: Any) -> httpx.Response:
        seconds = total_timeout(request)
        deadline = None if seconds is None else asyncio.get_running_loop().time() + seconds
        cap = request.extensions.get(MAX_REPLY_BYTES_EXTENSION, self.max_reply_bytes)
        request.headers["Accept-Encoding"] = "identity"
        try:
            async with asyncio.timeout_at(deadline):
                response = await super().send(request, stream=True, **kwargs)
        except TimeoutError:
            raise httpx.ReadTimeout(f"no reply within the {seconds:g}s deadline", request=request) from None
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        decoder = _decoder(encoding)
        if decoder is False:
            await response.aclose()
            raise httpx.DecodingError(f"the reply is {encoding}-encoded although identity was asked for",
                                      request=request)
        if decoder is not None:  # decoded by the stream below, so httpx must not decode it again
            del response.headers["content-encoding"]
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _LimitedStream(response.stream, request, deadline, seconds, cap, decoder)
        if not stream:
            try:
                await response.aread()
            except BaseException:
                await response.aclose()
                raise
        return response


class _LimitedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, request: httpx.Request, deadline: float | None,
                 seconds: float | None, cap: int | None, decoder: Any):
        self._inner, self._request = inner, request
        self._deadline, self._seconds, self._cap, self._decoder = deadline, seconds, cap, decoder

    async def __aiter__(self) -> AsyncIterator[bytes]:
        passed = 0
        chunks = self._inner.__aiter__()
        while True:
            try:
                async with asyncio.timeout_at(self._deadline):
                    raw = await chunks.__anext__()
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise httpx.ReadTimeout(f"the reply was not complete within the {self._seconds:g}s deadline",
                                        request=self._request) from None
            room = None if self._cap is None else self._cap - passed
            chunk, more = self._decode(raw, room)
            if chunk:
                passed += len(chunk)
                yield chunk
            if more:  # over the cap: what fits was passed on, nothing else is read
                raise ReplyTooLarge(f"the reply is longer than {self._cap} bytes", request=self._request)
        if self._decoder is not None and (tail := self._decoder.flush()):
            if self._cap is not None and passed + len(tail) > self._cap:
                raise ReplyTooLarge(f"the reply is longer than {self._cap} bytes", request=self._request)
            yield tail

    def _decode(self, raw: bytes, room: int | None) -> tuple[bytes, bool]:
        """(the bytes that fit in ``room``, whether there was more)."""
        if self._decoder is None:
            if room is None or len(raw) <= room:
                return raw, False
            return raw[:room], True
        try:
            if room is None:
                return self._decoder.decompress(raw), False
            out = self._decoder.decompress(raw, room + 1)  # one byte more says whether the cap is passed
        except zlib.error as e:
            raise httpx.DecodingError(f"the compressed reply is corrupt: {e}", request=self._request) from None
        return (out[:room], True) if len(out) > room or self._decoder.unconsumed_tail else (out, False)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _decoder(encoding: str) -> Any:
    """A zlib decompressor for ``encoding``, None for identity, False for one this module does not decode."""
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj(zlib.MAX_WBITS)
    return False


async def read_capped(response: httpx.Response, max_bytes: int) -> tuple[bytes, bool]:
    """A streamed response's body up to ``max_bytes``: ``(body, complete)``; past the cap nothing more is read."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            if size + len(chunk) > max_bytes:
                chunks.append(chunk[: max_bytes - size])
                return b"".join(chunks), False
            chunks.append(chunk)
            size += len(chunk)
    except ReplyTooLarge:
        return b"".join(chunks), False
    return b"".join(chunks), True


_loop: asyncio.AbstractEventLoop | None = None
_loop_thread: threading.Thread | None = None
_loop_lock = threading.Lock()


def run_blocking_http(coro: Awaitable[T]) -> T:
    """Await ``coro`` on this module's event loop (a daemon thread) and return its result.

    For synchronous callers of the async HTTP clients; the coroutine's own
    deadline bounds the wait. Calling it from that loop's thread would
    deadlock, so that is an error.
    """
    global _loop, _loop_thread
    with _loop_lock:
        if _loop is None or _loop.is_closed():
            _loop = asyncio.new_event_loop()
            _loop_thread = threading.Thread(target=_loop.run_forever, name="agentrft-http", daemon=True)
            _loop_thread.start()
        loop = _loop
    if threading.current_thread() is _loop_thread:
        raise RuntimeError("run_blocking_http was called from its own event loop")
    return asyncio.run_coroutine_threadsafe(coro, loop).result()  # type: ignore[arg-type]
