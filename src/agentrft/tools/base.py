"""The tool seam: one small async protocol that every kind of tool implements.

Python functions and environment methods (:mod:`agentrft.tools.environment`),
HTTP tool endpoints in OpenAI's Agent RFT wire format, MCP server tools and
sandboxed code execution all look the same to the rollout loop: a ``name``, an
OpenAI function ``schema`` and an async ``acall``. Async because the calls of
one assistant turn run concurrently and because network transports (httpx,
MCP sessions) are async; plain functions are run in worker threads.

Tool failures are not crashes: a tool raises :class:`ToolFailure` with a typed
:class:`~agentrft.types.ToolErrorKind`; the executor turns it (and any other
exception, timeout or validation failure) into a recorded, model-visible error.

All async work runs on one process-wide background event loop
(:func:`run_sync`), so per-rollout sessions (MCP, HTTP pools) that are bound to
a loop stay usable across the turns of a rollout. Blocking (synchronous) tool
code runs in its own daemon thread (:func:`run_blocking`) rather than in the
loop's default executor, whose few workers (``min(32, cpus + 4)``) would
serialise the tool calls of many concurrent rollouts, and whose non-daemon
workers would keep a hung tool function from ever letting the process exit.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol, TypeVar, runtime_checkable

from agentrft.types import TaskRow, ToolErrorKind

T = TypeVar("T")


class ToolFailure(Exception):
    """Raised by a tool to report a typed failure (shown to the model, recorded)."""

    def __init__(self, kind: ToolErrorKind, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass
class ToolContext:
    """What a tool call may know about the rollout it is part of."""

    trace_id: str  # the same for every call of one rollout
    call_id: str
    turn: int
    item: TaskRow = field(default_factory=dict)  # the task row


@runtime_checkable
class Tool(Protocol):
    name: str
    has_implementation: bool
    """False only for tools declared by schema alone (OpenAI RFT function-calling
    mode): calling one ends the rollout at that assistant turn instead of running it."""

    def schema(self) -> dict[str, Any]:
        """OpenAI function schema: ``{"type": "function", "function": {name, description, parameters}}``."""
        ...

    async def acall(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        """Run the tool; return the text shown to the model or raise :class:`ToolFailure`."""
        ...


_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def background_loop() -> asyncio.AbstractEventLoop:
    """The process-wide event loop (started on first use in a daemon thread)."""
    global _loop
    with _loop_lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="agentrft-tools", daemon=True).start()
            _loop = loop
        return _loop


def run_sync(coro: Awaitable[T], timeout: float | None = None) -> T:
    """Run a coroutine on the background loop from synchronous code and wait for it."""
    fut = asyncio.run_coroutine_threadsafe(coro, background_loop())  # type: ignore[arg-type]
    return fut.result(timeout)


async def run_blocking(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run blocking ``fn(*args, **kwargs)`` in a fresh daemon thread and await its result.

    Cancelling the awaiting task (e.g. a deadline) returns at once, but a
    Python thread cannot be killed: the call keeps running in the background
    until ``fn`` returns, and its result is then discarded. Being a daemon
    thread, it never blocks interpreter exit. ``BaseException`` s that are not
    ``Exception`` s (``SystemExit`` from a tool calling ``sys.exit``) are
    re-raised as :class:`ToolFailure` so they cannot stop the event loop.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)

    def deliver(setter: Callable[[Any], None], value: Any) -> None:
        if not future.done():  # the awaiting task may have given up (deadline)
            setter(value)

    def work() -> None:
        try:
            outcome: tuple[Callable[[Any], None], Any] = (future.set_result, call())
        except StopIteration as e:  # futures refuse StopIteration (it would end a generator)
            outcome = (future.set_exception, RuntimeError(f"StopIteration: {e}"))
        except Exception as e:
            outcome = (future.set_exception, e)
        except BaseException as e:
            failure = ToolFailure(ToolErrorKind.EXCEPTION, f"{type(e).__name__}: {e}")
            outcome = (future.set_exception, failure)
        try:
            loop.call_soon_threadsafe(deliver, *outcome)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more

    name = getattr(fn, "__name__", "call")
    threading.Thread(target=work, name=f"agentrft-tool-{name}", daemon=True).start()
    return await future
