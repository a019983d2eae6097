"""Guardrails: per-rollout policies that refuse tool calls before they run.

What: a :class:`GuardrailConfig` (typed, ``extra="forbid"``, saved with a run
like any other config section) says which tools a rollout may call and how;
:class:`Guardrails` applies it. The :class:`~agentrft.tools.executor.ToolExecutor`
asks :meth:`Guardrails.check` about each call of a turn, in call order, after
its own checks (budget, unknown tool, JSON-schema validation) and before
anything runs. A refused call does not run; it becomes a
:class:`~agentrft.types.ToolCallRecord` with a ``ToolErrorKind.GUARDRAIL``
error, which the model sees as ``Error (guardrail): ...`` and which
:func:`count_guardrail_violations` counts on the trajectory. The rules:

======================  ==========================================================
``allowed_tools``       only these tool names (``None``: all); a task row may narrow
                        it with its own list under ``allowed_tools_field``
                        (default ``row["allowed_tools"]``)
``max_calls_per_tool``  at most N calls of a tool per rollout are let through
``max_successful_calls`` for tools with side effects (``issue_refund``): at most N
                        calls may *succeed*; a call that failed does not use up the
                        allowance, but a call still running (or timed out: its
                        thread may still finish) does, so two calls of one turn
                        cannot both slip through
``argument_constraints`` extra JSON-schema checks per argument, on top of the tool's
                        own schema: ``{"issue_refund": {"amount": {"maximum": 100}}}``
``argument_checks``     (code, not config) ``tool -> callable(arguments) -> str | None``;
                        a returned string is the refusal; a check that raises refuses
======================  ==========================================================

Why in the executor and not in each tool: the same policy applies to any tool
-- Python methods, HTTP endpoints, MCP servers -- without touching them, and a
policy change is a config change that is recorded with the run. Tools can
still refuse on their own with ``ToolFailure(GUARDRAIL, ...)`` (the support
environment does); :func:`count_guardrail_violations` counts both alike.

Why refusals are typed records, not exceptions or silent drops: a refused call
is behaviour the reward should see (a policy that keeps trying forbidden tools
is a worse policy), and it is counted in metrics, never lost.

State: a :class:`GuardrailState` is made per rollout by
:meth:`Guardrails.start` (from the task row) and held by the executor. The
executor tells it when an admitted call finishes (:meth:`GuardrailState.finish`),
which is what ``max_successful_calls`` counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, relevance
from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentrft.errors import ConfigError
from agentrft.tools.schema import describe_schema_error
from agentrft.types import TaskRow, ToolCall, ToolError, ToolErrorKind, Trajectory

__all__ = [
    "ArgumentCheck",
    "GuardrailConfig",
    "GuardrailState",
    "Guardrails",
    "count_guardrail_violations",
]

ArgumentCheck = Callable[[dict[str, Any]], "str | None"]
"""A code-level argument rule: the call's arguments in, ``None`` to allow or the refusal text."""


class GuardrailConfig(BaseModel):
    """Which tools a rollout may call, how often, and with which arguments. Empty = no guardrails."""

    model_config = ConfigDict(extra="forbid")

    allowed_tools: list[str] | None = None
    """Tool names the model may call in every task; ``None`` allows every tool."""
    allowed_tools_field: str | None = "allowed_tools"
    """Task-row key of a per-task allow-list (narrows ``allowed_tools``); ``None`` ignores the rows."""
    max_calls_per_tool: dict[str, int] = Field(default_factory=dict)
    """Tool name -> calls per rollout the guardrails let through; later ones are refused."""
    max_successful_calls: dict[str, int] = Field(default_factory=dict)
    """Tool name -> calls per rollout that may succeed (for tools with side effects, e.g. one refund).
    Failed calls do not count; calls still running do."""
    argument_constraints: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)
    """Tool name -> argument name -> extra JSON schema (Draft 2020-12) its value must satisfy."""

    @field_validator("max_calls_per_tool", "max_successful_calls")
    @classmethod
    def _non_negative(cls, value: dict[str, int]) -> dict[str, int]:
        bad = {name: n for name, n in value.items() if n < 0}
        if bad:
            raise ValueError(f"limits must be >= 0, got {bad}")
        return value

    @field_validator("argument_constraints")
    @classmethod
    def _valid_schemas(cls, value: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
        for tool_name, per_argument in value.items():
            for argument, schema in per_argument.items():
                try:
                    Draft202012Validator.check_schema(schema)
                except SchemaError as e:
                    raise ValueError(f"{tool_name}.{argument}: invalid JSON schema: {e.message}") from None
        return value


@dataclass
class GuardrailState:
    """One rollout's guardrail bookkeeping (made by :meth:`Guardrails.start`, held by the executor)."""

    allowed_tools: frozenset[str] | None
    """The allow-list in force for this task (config and row combined); ``None``: all tools."""
    admitted: Counter[str] = field(default_factory=Counter)
    """Tool name -> calls let through so far (running, finished, failed)."""
    running: Counter[str] = field(default_factory=Counter)
    """Tool name -> admitted calls that have not finished yet."""
    succeeded: Counter[str] = field(default_factory=Counter)
    """Tool name -> admitted calls that finished without an error."""
    refused: Counter[str] = field(default_factory=Counter)
    """Tool name -> calls the guardrails refused."""

    def admit(self, call: ToolCall) -> None:
        """Count ``call`` as let through (call it right after :meth:`Guardrails.check` returned ``None``)."""
        self.admitted[call.name] += 1
        self.running[call.name] += 1

    def finish(self, call: ToolCall, error: ToolError | None) -> None:
        """An admitted call ended (``error`` None: it succeeded).

        A ``TIMEOUT`` counts as a success: the executor stopped waiting, but a
        sync tool keeps running in its thread and may still have its effect.
        """
        self.running[call.name] -= 1
        if error is None or error.kind == ToolErrorKind.TIMEOUT:
            self.succeeded[call.name] += 1


class Guardrails:
    """Applies a :class:`GuardrailConfig` (plus optional code-level argument checks) to tool calls."""

    def __init__(
        self,
        config: GuardrailConfig | Mapping[str, Any] | None = None,
        argument_checks: Mapping[str, ArgumentCheck] | None = None,
    ):
        if config is None:
            config = GuardrailConfig()
        elif not isinstance(config, GuardrailConfig):
            config = GuardrailConfig.model_validate(dict(config))
        self.config = config
        self.argument_checks: dict[str, ArgumentCheck] = dict(argument_checks or {})
        for name, check in self.argument_checks.items():
            if not callable(check):
                raise ConfigError(f"argument check for {name!r} is not callable: {check!r}")
        self._validators = {
            name: Draft202012Validator({"type": "object", "properties": per_argument})
            for name, per_argument in config.argument_constraints.items()
        }

    def start(self, item: TaskRow | None = None) -> GuardrailState:
        """Fresh state for one rollout of task ``item`` (its allow-list, if the row has one)."""
        allowed = None if self.config.allowed_tools is None else frozenset(self.config.allowed_tools)
        key = self.config.allowed_tools_field
        row_list = (item or {}).get(key) if key else None
        if row_list is not None:
            if isinstance(row_list, str) or not all(isinstance(n, str) for n in row_list):
                raise ConfigError(f"task row field {key!r} must be a list of tool names, got {row_list!r}")
            allowed = frozenset(row_list) if allowed is None else allowed & frozenset(row_list)
        return GuardrailState(allowed_tools=allowed)

    def check(self, call: ToolCall, state: GuardrailState) -> ToolError | None:
        """Why ``call`` must not run (a ``GUARDRAIL`` error), or ``None``; records refusals in ``state``.

        Does not admit the call: the caller runs it and then calls
        :meth:`GuardrailState.admit` / :meth:`GuardrailState.finish`.
        """
        message = self._violation(call, state)
        if message is None:
            return None
        state.refused[call.name] += 1
        return ToolError(ToolErrorKind.GUARDRAIL, message)

    def _violation(self, call: ToolCall, state: GuardrailState) -> str | None:
        name, cfg = call.name, self.config
        if state.allowed_tools is not None and name not in state.allowed_tools:
            allowed = ", ".join(sorted(state.allowed_tools)) or "none"
            return f"tool {name!r} is not allowed in this task; allowed tools: {allowed}"
        limit = cfg.max_calls_per_tool.get(name)
        if limit is not None and state.admitted[name] >= limit:
            return f"{name!r} may be called at most {limit} time(s) per task; this call was not run"
        limit = cfg.max_successful_calls.get(name)
        if limit is not None and state.succeeded[name] + state.running[name] >= limit:
            return (f"{name!r} may succeed at most {limit} time(s) per task and that is used up "
                    "(or a call is still running); this call was not run")
        validator = self._validators.get(name)
        if validator is not None:
            problems = sorted(validator.iter_errors(call.arguments), key=relevance, reverse=True)
            if problems:
                shown = "; ".join(describe_schema_error(e) for e in problems[:5])
                return f"arguments of {name!r} break a policy: {shown}"
        check = self.argument_checks.get(name)
        if check is not None:
            try:
                refusal = check(dict(call.arguments))
            except Exception as e:  # a broken rule refuses (fail closed) rather than crash the rollout
                return f"the argument check of {name!r} failed ({type(e).__name__}: {e}); this call was not run"
            if refusal is not None:
                return f"arguments of {name!r} break a policy: {refusal}"
        return None


def count_guardrail_violations(trajectory: Trajectory) -> int:
    """Tool calls of ``trajectory`` refused by a guardrail (the executor's or a tool's own)."""
    return sum(1 for r in trajectory.tool_calls if r.error is not None and r.error.kind == ToolErrorKind.GUARDRAIL)
