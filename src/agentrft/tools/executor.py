"""Runs one rollout's tool calls: validation, deadline, budget, concurrency, records.

What: a :class:`ToolExecutor` is made once per rollout from its tools and
:class:`ToolLimits`. :meth:`ToolExecutor.aexecute` runs the calls of one
assistant turn **concurrently** (``asyncio.gather``) and returns one
:class:`~agentrft.types.ToolCallRecord` per call, in call order. Every check
that fails becomes a typed error instead of an exception (a bad rollout is data,
not a crash), and the model sees it as the tool's result, e.g.
``Error (invalid_arguments): 'query' is a required property``:

==================  =================================================================
``BUDGET_EXCEEDED``  more than ``max_calls`` calls attempted in this rollout (every
                     attempted call counts, across turns); the call is not run
``UNKNOWN_TOOL``     no tool of that name
``INVALID_ARGUMENTS`` the arguments fail JSON-schema validation (Draft 2020-12)
                     against the tool's ``parameters``; validator message and path
``GUARDRAIL``        the optional :class:`~agentrft.tools.guardrails.Guardrails` refused
                     it (allow-list, per-tool cap, argument policy); not run
``TIMEOUT``          not finished within ``timeout_s`` (``asyncio.wait_for``)
``<kind>``           the tool raised ``ToolFailure(kind, message)``
``EXCEPTION``        the tool raised anything else: ``"ExcType: message"``
==================  =================================================================

The refusals (budget, unknown tool, arguments, guardrail) are decided for
the calls of a turn in call order before any call starts, so which calls are
refused never depends on timing.

Results longer than ``max_output_chars`` are cut to that many characters and
end with ``[truncated: N characters omitted]``; for a failure the message is
cut, so the ``Error (kind):`` prefix always survives.

Timeouts and threads: an async tool past its deadline is cancelled. A sync tool
runs in a thread (:func:`~agentrft.tools.base.run_blocking`), and Python
threads cannot be killed, so the deadline only stops *waiting*: the rollout
moves on at once with a ``TIMEOUT`` record while the function keeps running in
its daemon thread until it returns, and its result is discarded. Tools that can
hang (network, subprocesses) should enforce their own timeouts as well.

Malformed tool calls never reach the executor as calls; the rollout loop
records them with :meth:`ToolExecutor.record_parse_error` (not counted against
the budget: nothing was attempted that could run).

Schema-only tools (declared by a row's ``tools``, implemented nowhere: OpenAI's
function-calling mode) are never run: a call to one is the rollout's output.
:meth:`ToolExecutor.record_output_calls` records each such call (no result;
``SCHEMA_VIOLATION`` when its arguments fail the schema, while the call itself
still goes to the grader unchanged, as OpenAI passes it), so every calls metric
counts them like any other call.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, relevance

from agentrft.errors import ConfigError, ToolDefinitionError
from agentrft.tools.base import Tool, ToolContext, ToolFailure, run_sync
from agentrft.tools.guardrails import Guardrails
from agentrft.tools.schema import describe_schema_error, result_text
from agentrft.types import TaskRow, ToolCall, ToolCallRecord, ToolError, ToolErrorKind

__all__ = ["ToolExecutor", "ToolLimits", "error_text", "truncate_text"]

UNPARSED_CALL_NAME = "<unparsed>"
MAX_SCHEMA_ERRORS_SHOWN = 5


@dataclass
class ToolLimits:
    """Per-rollout limits on tool use."""

    timeout_s: float = 30.0
    """Deadline of each call, from its start."""
    max_calls: int = 32
    """Calls a rollout may attempt, counted across turns; later calls are refused (BUDGET_EXCEEDED)."""
    max_output_chars: int = 20000
    """Longer results (and error texts) are cut, with a marker, before the model sees them."""

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ConfigError(f"tool timeout_s must be > 0, got {self.timeout_s}")
        if self.max_calls < 0:
            raise ConfigError(f"tool max_calls must be >= 0, got {self.max_calls}")
        if self.max_output_chars < 1:
            raise ConfigError(f"tool max_output_chars must be >= 1, got {self.max_output_chars}")


class ToolExecutor:
    """Executes the tool calls of one rollout (make one per rollout: it holds the call budget)."""

    def __init__(
        self,
        tools: Sequence[Tool],
        limits: ToolLimits | None = None,
        trace_id: str | None = None,
        item: TaskRow | None = None,
        guardrails: Guardrails | None = None,
    ):
        self.limits = limits or ToolLimits()
        self.trace_id = trace_id or uuid.uuid4().hex
        self.item: TaskRow = item if item is not None else {}
        self.tools: dict[str, Tool] = {}
        self._validators: dict[str, Draft202012Validator] = {}
        for t in tools:
            if t.name in self.tools:
                raise ToolDefinitionError(f"two tools are named {t.name!r}")
            self.tools[t.name] = t
            self._validators[t.name] = _validator(t)
        self.calls_made = 0
        """Calls attempted so far in this rollout (including refused and failed ones)."""
        self.guardrails = guardrails
        self.guardrail_state = guardrails.start(self.item) if guardrails is not None else None
        """This rollout's guardrail bookkeeping (``None`` without guardrails)."""

    # -- running calls ----------------------------------------------------------------
    async def aexecute(self, calls: Sequence[ToolCall], turn: int) -> list[ToolCallRecord]:
        """Run one turn's calls concurrently; one record per call, in call order."""
        # The budget and guardrails are applied in call order before anything runs,
        # so which calls are refused does not depend on which finishes first.
        refusals = []
        for call in calls:
            self.calls_made += 1
            refusals.append(self._refusal(call, self.calls_made <= self.limits.max_calls))
        return list(await asyncio.gather(*(self._run(c, turn, r) for c, r in zip(calls, refusals))))

    def execute(self, calls: Sequence[ToolCall], turn: int) -> list[ToolCallRecord]:
        """Synchronous :meth:`aexecute` (on the tools background loop; do not call from that loop)."""
        return run_sync(self.aexecute(calls, turn))

    def schema_only_called(self, calls: Sequence[ToolCall]) -> bool:
        """True if any call targets a tool without an implementation (the calls are the rollout's output)."""
        return any(self.is_schema_only(c) for c in calls)

    def is_schema_only(self, call: ToolCall) -> bool:
        """Whether ``call`` targets a tool declared by schema only (its call is an output, not an action)."""
        return call.name in self.tools and not getattr(self.tools[call.name], "has_implementation", True)

    def record_output_calls(self, calls: Sequence[ToolCall], turn: int) -> list[ToolCallRecord]:
        """Records of schema-only calls, which are not run: arguments checked against the tool's schema."""
        records = []
        for call in calls:
            problems = sorted(self._validators[call.name].iter_errors(call.arguments), key=relevance, reverse=True)
            messages = [self._schema_message(problems)] if problems else []
            undeclared = self._undeclared_arguments(call)
            if undeclared:
                messages.append(f"{', '.join(map(repr, undeclared))} not among the parameters of {call.name!r}")
            error = ToolError(ToolErrorKind.SCHEMA_VIOLATION, self._cut("; ".join(messages))) if messages else None
            records.append(ToolCallRecord(call=call, turn=turn, result="", error=error))
        return records

    def _undeclared_arguments(self, call: ToolCall) -> list[str]:
        """Argument names the schema does not declare, when it lists its parameters and does not say
        ``additionalProperties`` (JSON Schema would allow them; for a function they are a wrong name)."""
        schema = self.tools[call.name].schema()
        params = schema.get("function", schema).get("parameters") or {}
        props = params.get("properties")
        if not isinstance(props, dict) or "additionalProperties" in params:
            return []
        return [k for k in call.arguments if k not in props]

    def record_parse_error(self, raw_text: str, message: str, turn: int) -> ToolCallRecord:
        """The record of a tool call the model wrote but that could not be parsed."""
        error = ToolError(ToolErrorKind.PARSE_ERROR, self._cut(message))
        call = ToolCall(name=UNPARSED_CALL_NAME, arguments={"raw": raw_text})
        return ToolCallRecord(call=call, turn=turn, result=error_text(error), error=error)

    async def _run(self, call: ToolCall, turn: int, refusal: ToolError | None) -> ToolCallRecord:
        start = time.perf_counter()
        error = refusal
        result = ""
        if error is None:
            ctx = ToolContext(trace_id=self.trace_id, call_id=call.id, turn=turn, item=self.item)
            try:
                result, error = await asyncio.wait_for(self._invoke(self.tools[call.name], call, ctx), self.limits.timeout_s)
            except asyncio.TimeoutError:  # only the deadline: _invoke turns the tool's own errors into values
                error = ToolError(
                    ToolErrorKind.TIMEOUT, f"{call.name!r} did not finish within {self.limits.timeout_s:g}s"
                )
            if self.guardrail_state is not None:
                self.guardrail_state.finish(call, error)
        latency = time.perf_counter() - start
        if error is None:
            result = self._cut(result)
        else:  # cut the message, never the "Error (kind):" prefix the model keys on
            error = ToolError(error.kind, self._cut(error.message))
            result = error_text(error)
        return ToolCallRecord(call=call, turn=turn, result=result, error=error, latency_s=latency)

    def _refusal(self, call: ToolCall, within_budget: bool) -> ToolError | None:
        """Why the call must not run, if it must not."""
        if not within_budget:
            return ToolError(
                ToolErrorKind.BUDGET_EXCEEDED,
                f"the budget of {self.limits.max_calls} tool calls per rollout is used up; this call was not run",
            )
        if call.name not in self.tools:
            available = ", ".join(sorted(self.tools)) or "none"
            return ToolError(ToolErrorKind.UNKNOWN_TOOL, f"unknown tool {call.name!r}; available tools: {available}")
        problems = sorted(self._validators[call.name].iter_errors(call.arguments), key=relevance, reverse=True)
        if problems:
            return ToolError(ToolErrorKind.INVALID_ARGUMENTS, self._schema_message(problems))
        if self.guardrails is not None and self.guardrail_state is not None:
            refused = self.guardrails.check(call, self.guardrail_state)
            if refused is not None:
                return refused
            self.guardrail_state.admit(call)  # counted now, so later calls of this turn see it
        return None

    @staticmethod
    async def _invoke(tool: Tool, call: ToolCall, ctx: ToolContext) -> tuple[str, ToolError | None]:
        try:
            value = await tool.acall(call.arguments, ctx)
        except ToolFailure as e:
            return "", ToolError(e.kind, e.message)
        except Exception as e:
            return "", ToolError(ToolErrorKind.EXCEPTION, f"{type(e).__name__}: {e}")
        except asyncio.CancelledError as e:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # our deadline, or the caller gave up
                raise
            # A cancellation from inside the tool (a library's own cancel scope)
            # must fail this call only, not the whole turn's gather.
            return "", ToolError(ToolErrorKind.EXCEPTION, f"CancelledError: {e}" if str(e) else "CancelledError")
        return result_text(value), None

    @staticmethod
    def _schema_message(problems: list) -> str:
        shown = [describe_schema_error(e) for e in problems[:MAX_SCHEMA_ERRORS_SHOWN]]
        if len(problems) > MAX_SCHEMA_ERRORS_SHOWN:
            shown.append(f"and {len(problems) - MAX_SCHEMA_ERRORS_SHOWN} more")
        return "; ".join(shown)

    def _cut(self, text: str) -> str:
        return truncate_text(text, self.limits.max_output_chars)


def error_text(error: ToolError) -> str:
    """What the model sees for a failed call."""
    return f"Error ({error.kind.value}): {error.message}"


def truncate_text(text: str, max_chars: int) -> str:
    """Keep the first ``max_chars`` characters and say how many were dropped."""
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}\n[truncated: {len(text) - max_chars} characters omitted]"


def _validator(t: Tool) -> Draft202012Validator:
    schema = t.schema()
    fn = schema.get("function", schema)  # chat shape, or the flat Responses shape
    parameters = fn.get("parameters") or {"type": "object", "properties": {}}
    try:
        return _compiled_validator(json.dumps(parameters, sort_keys=True))
    except SchemaError as e:
        raise ToolDefinitionError(f"tool {t.name!r} has an invalid parameters schema: {e.message}") from e
    except TypeError as e:
        raise ToolDefinitionError(f"tool {t.name!r} has a parameters schema that is not JSON: {e}") from e


@functools.lru_cache(maxsize=1024)
def _compiled_validator(parameters_json: str) -> Draft202012Validator:
    # The same tools are offered to every rollout: check and compile each schema once.
    parameters = json.loads(parameters_json)
    Draft202012Validator.check_schema(parameters)
    return Draft202012Validator(parameters)
