"""Environments: per-rollout state whose public methods are the model's tools.

What: subclass :class:`Environment`, write ordinary typed, documented methods,
and each public method becomes a :class:`~agentrft.tools.schema.FunctionTool`
bound to the instance (schema from its type hints and docstring; decorate it
with :func:`~agentrft.tools.schema.tool` for a custom name or description)::

    class Bank(Environment):
        def setup(self, row: dict) -> None:
            self.balance = row["opening_balance"]

        def deposit(self, amount: float) -> float:
            \"\"\"Deposit money; returns the new balance.

            Args:
                amount: how much to deposit.
            \"\"\"
            self.balance += amount
            return self.balance

        def submit(self, answer: str) -> str:
            \"\"\"Submit the final answer.\"\"\"
            self.answer, self.done = answer, True  # the episode ends after this turn
            return "submitted"

Why an instance per rollout: tool state (a database transaction, a shopping
cart, a scratch folder) must not leak between rollouts, and the rollouts of a
group run at the same time. The rollout loop builds a fresh instance from each
task row, calls :meth:`Environment.asetup` with the row, offers
:meth:`Environment.tools` to the model, and always calls
:meth:`Environment.aclose` at the end, even after a failure.

Lifecycle hooks are not tools: anything defined on :class:`Environment` itself
(``setup``, ``close``, ``asetup``, ``aclose``, ``tools``, ``extra_tools``,
``from_tools``, ``done``) and any name starting with ``_`` (use that for
helpers). Override ``asetup``/``aclose`` for asynchronous set-up (an MCP
session, an HTTP pool); the defaults run the synchronous ``setup``/``close``
in a worker thread so a slow set-up does not stall other rollouts' tool calls.
Tools beyond the methods (HTTP endpoint, MCP or sandbox tools) come from the
:meth:`Environment.extra_tools` hook.

Concurrency: the tool calls of one assistant turn run concurrently, and sync
methods run in worker threads, so two methods of one instance may run at the
same time; guard shared state with a lock when that matters.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from agentrft.errors import ToolDefinitionError
from agentrft.tools.base import Tool, run_blocking
from agentrft.tools.schema import FunctionTool
from agentrft.types import Grade, TaskRow, Trajectory

__all__ = ["EnvSpec", "Environment", "FunctionEnvironment"]


class Environment:
    """Per-rollout state; its public methods are tools. Make a fresh instance for every rollout."""

    done: bool = False
    """Set to True (e.g. in a ``submit`` tool) to end the episode after the current turn."""

    # -- lifecycle -------------------------------------------------------------------
    def setup(self, row: TaskRow) -> None:
        """Prepare for the rollout of task ``row`` (called once, before the first turn)."""

    def close(self) -> None:
        """Release resources (called once at the end of the rollout, whatever happened)."""

    async def asetup(self, row: TaskRow) -> None:
        """Async set-up; by default runs :meth:`setup` in a worker thread."""
        if type(self).setup is not Environment.setup:
            await run_blocking(self.setup, row)

    async def aclose(self) -> None:
        """Async tear-down; by default runs :meth:`close` in a worker thread."""
        if type(self).close is not Environment.close:
            await run_blocking(self.close)

    # -- tools --------------------------------------------------------------------------
    def tools(self) -> list[Tool]:
        """The method tools (in definition order) followed by :meth:`extra_tools`; names must be unique."""
        found: list[Tool] = [FunctionTool(getattr(self, name)) for name in _tool_method_names(type(self))]
        found.extend(self.extra_tools())
        seen: set[str] = set()
        for t in found:
            if t.name in seen:
                raise ToolDefinitionError(f"{type(self).__name__} has two tools named {t.name!r}")
            seen.add(t.name)
        return found

    def extra_tools(self) -> Sequence[Tool]:
        """Hook: tools that are not methods (HTTP endpoint, MCP, sandbox tools). None by default."""
        return []

    @classmethod
    def from_tools(cls, tools: Iterable[Callable[..., Any] | Tool]) -> "FunctionEnvironment":
        """A stateless environment offering plain functions and/or ready :class:`Tool` objects."""
        return FunctionEnvironment(tools)


class FunctionEnvironment(Environment):
    """An environment made of plain functions and :class:`Tool` objects rather than methods."""

    def __init__(self, tools: Iterable[Callable[..., Any] | Tool]):
        self._tools: list[Tool] = [t if _is_tool(t) else FunctionTool(t) for t in tools]

    def extra_tools(self) -> Sequence[Tool]:
        return list(self._tools)


@dataclass
class EnvSpec:
    """A task set's environment: what a run, an eval or the server needs to use it.

    How to load its task splits, how to make a fresh per-rollout
    :class:`Environment` from a task row, and its default grader. Built-in ones
    come from :func:`agentrft.envs.registry.get_env`; write your own as a
    function returning an ``EnvSpec`` (``--env package.module:function``).
    """

    name: str
    description: str
    splits: tuple[str, ...]
    load_split: Callable[[str], list[TaskRow]]
    make_env: Callable[[TaskRow], Environment | None]
    """A fresh instance per rollout (``None``: the row's schema-only tools and no state)."""
    grade: Callable[[Trajectory, TaskRow], Grade]
    """The default grader (``agentrft eval`` and training use it unless given another)."""
    oracles: dict[str, Callable[[TaskRow], list[dict]]] | None = None
    """Scripted policies: name -> function(row) -> the complete executed conversation (system, user,
    assistant tool calls, tool results, final answer), i.e. a demonstration for SFT/DPO."""


def _is_tool(obj: Any) -> bool:
    """A ready Tool (duck-typed: ``schema`` and ``acall``), as opposed to a function to wrap."""
    return not inspect.isroutine(obj) and callable(getattr(obj, "schema", None)) and callable(getattr(obj, "acall", None))


_RESERVED = frozenset(dir(Environment))


@functools.lru_cache(maxsize=None)
def _tool_method_names(cls: type) -> tuple[str, ...]:
    """Public methods defined below :class:`Environment` in ``cls``'s hierarchy, base classes first."""
    names: list[str] = []
    for klass in reversed(cls.__mro__):
        if issubclass(Environment, klass):  # Environment itself and its bases (object)
            continue
        for name, attr in vars(klass).items():
            if name.startswith("_") or name in _RESERVED or name in names:
                continue
            if inspect.isfunction(attr) or isinstance(attr, (staticmethod, classmethod)):
                names.append(name)
    # A subclass may shadow an inherited method with a non-method (e.g. ``search = None``).
    return tuple(
        n for n in names
        if inspect.isfunction(a := inspect.getattr_static(cls, n)) or isinstance(a, (staticmethod, classmethod))
    )
