"""Prompt, tool and guardrail variants, applied around an environment without touching it.

What a variant changes is what the model sees and may do, never how it is
measured: the system message of every task row, the description of a tool in
the schemas rendered into the prompt, how long a tool result may be before it
is truncated, the rollout's budgets (turns, tokens, tool calls), and guardrails
(allow-lists, per-tool caps, argument constraints). Sampling settings
(temperature, top-p, seed) are the measurement's and are refused here, so two
variants differ only by what they are meant to test.

How, without editing the environment or the episode loop:

* system prompt: each task row gets a copy whose first ``system`` message is
  replaced (``system_prompt_mode: replace``) or prefixed (``prepend``), or a
  new first message when the row has none; the episode loop renders rows as
  given, so the prompt tokens carry the new text;
* tool descriptions: :func:`apply_variant` wraps the :class:`EnvSpec`'s
  ``make_env`` so each rollout's environment is a :class:`VariantEnvironment`,
  whose ``tools()`` are the inner tools wrapped by :class:`VariantTool`
  (same name, arguments and behaviour; ``schema()`` with the new
  description). Tools a row declares itself (``row["tools"]``) are rewritten
  in the row copy;
* tool output and budgets: a :class:`~agentrft.config.RolloutConfig` with the
  variant's values (``tool_output.max_chars`` is ``max_tool_output_chars``);
* guardrails: the same :class:`~agentrft.tools.guardrails.Guardrails` class the
  executor applies, checked in :meth:`VariantTool.acall` before the inner tool
  runs; a refusal is the typed ``guardrail`` error a guarded executor records.
  (The evaluation functions take no guardrails argument; the wrapper keeps
  them untouched. Departure: the executor checks a turn's calls before any of
  them starts; here each call is checked as it starts, in call order.)
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agentrft.config import RolloutConfig
from agentrft.tools.base import Tool, ToolContext, ToolFailure
from agentrft.tools.environment import Environment, EnvSpec
from agentrft.tools.guardrails import GuardrailConfig, Guardrails, GuardrailState
from agentrft.types import TaskRow, ToolCall, ToolError, ToolErrorKind

__all__ = ["MEASUREMENT_FIELDS", "ToolOutputVariant", "Variant", "VariantEnvironment", "VariantTool",
           "apply_variant", "rewrite_row", "variant_rollout"]

MEASUREMENT_FIELDS = ("temperature", "top_p", "seed")
"""RolloutConfig fields a variant may not change: they say how the variants are measured, not what they are."""

BASELINE = "baseline"
"""The name of the unchanged system (the base job as it is)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class ToolOutputVariant(_Section):
    """How tool results reach the model."""

    max_chars: int = Field(ge=1)
    """Tool results longer than this are truncated (``rollout.max_tool_output_chars``)."""


class Variant(_Section):
    """One candidate change to the system around the model; unset fields keep the base job's."""

    name: str = Field(min_length=1)
    """Shown in the report and used as the variant's folder name."""
    system_prompt: str | None = None
    """The system message of every task (see ``system_prompt_mode``)."""
    system_prompt_mode: Literal["replace", "prepend"] = "replace"
    """``replace`` the task's system message, or ``prepend`` this text to it (a blank line between)."""
    tool_descriptions: dict[str, str] = Field(default_factory=dict)
    """Tool name -> the description the model sees in the tool's schema (arguments unchanged)."""
    tool_output: ToolOutputVariant | None = None
    """Truncation of tool results."""
    rollout: dict[str, Any] = Field(default_factory=dict)
    """Budgets: any :class:`~agentrft.config.RolloutConfig` field but temperature, top_p and seed."""
    guardrails: GuardrailConfig | None = None
    """Allow-lists, per-tool caps and argument constraints checked before each tool call."""
    proposed_by: str | None = None
    """Set by the optimizer on variants a proposer model wrote (its round), never in a config."""

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if name == BASELINE or not all(c.isalnum() or c in "-_." for c in name):
            raise ValueError(f"{name!r}: use letters, digits, '-', '_' or '.', and not {BASELINE!r}")
        return name

    @field_validator("rollout")
    @classmethod
    def _rollout_fields(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(overrides) - set(RolloutConfig.model_fields))
        if unknown:
            raise ValueError(f"unknown rollout field(s) {unknown}; fields: {', '.join(RolloutConfig.model_fields)}")
        fixed = sorted(set(overrides) & set(MEASUREMENT_FIELDS))
        if fixed:
            raise ValueError(f"{fixed}: sampling settings belong to the measurement (the base job), not to a variant")
        RolloutConfig.model_validate({**RolloutConfig().model_dump(), **overrides})  # values in range
        return overrides

    @model_validator(mode="after")
    def _one_truncation(self) -> "Variant":
        if self.tool_output is not None and "max_tool_output_chars" in self.rollout:
            raise ValueError("set tool_output.max_chars or rollout.max_tool_output_chars, not both")
        return self

    def changes(self) -> list[str]:
        """What this variant changes, one short phrase each (for the report)."""
        out = []
        if self.system_prompt is not None:
            out.append(f"system prompt ({self.system_prompt_mode})")
        out += [f"description of {name}" for name in sorted(self.tool_descriptions)]
        if self.tool_output is not None:
            out.append(f"tool output <= {self.tool_output.max_chars} chars")
        out += [f"{k}={v}" for k, v in sorted(self.rollout.items())]
        if self.guardrails is not None:
            out.append("guardrails")
        return out


def variant_rollout(base: RolloutConfig, variant: Variant | None) -> RolloutConfig:
    """``base`` with the variant's budgets and truncation (sampling settings untouched)."""
    if variant is None:
        return base
    update = dict(variant.rollout)
    if variant.tool_output is not None:
        update["max_tool_output_chars"] = variant.tool_output.max_chars
    return RolloutConfig.model_validate({**base.model_dump(), **update})


def rewrite_row(row: TaskRow, variant: Variant) -> TaskRow:
    """A copy of ``row`` with the variant's system prompt and the descriptions of the row's own tools."""
    if variant.system_prompt is None and not variant.tool_descriptions:
        return row
    out = dict(row)
    if variant.system_prompt is not None:
        messages = [dict(m) for m in row.get("messages") or []]
        if messages and messages[0].get("role") in ("system", "developer"):
            old = messages[0].get("content")
            text = variant.system_prompt
            if variant.system_prompt_mode == "prepend" and old:
                text = f"{variant.system_prompt}\n\n{old if isinstance(old, str) else _text(old)}"
            messages[0] = {**messages[0], "role": "system", "content": text}
        else:
            messages.insert(0, {"role": "system", "content": variant.system_prompt})
        out["messages"] = messages
    if variant.tool_descriptions and row.get("tools"):
        out["tools"] = [_described(schema, variant.tool_descriptions) for schema in row["tools"]]
    return out


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return "" if content is None else str(content)


def _described(schema: dict[str, Any], descriptions: dict[str, str]) -> dict[str, Any]:
    """``schema`` (an OpenAI tool schema, wrapped in ``function`` or bare) with a new description, if named."""
    fn = schema.get("function", schema)
    name = fn.get("name")
    if name not in descriptions:
        return schema
    out = copy.deepcopy(schema)
    out_fn = out.get("function", out)
    out_fn["description"] = descriptions[name]
    return out


class VariantTool:
    """A tool as the variant shows it: the inner tool's name and behaviour, a new description, guardrails."""

    def __init__(self, inner: Tool, description: str | None, guard: "_Guard | None"):
        self.inner = inner
        self.name = inner.name
        self.has_implementation = getattr(inner, "has_implementation", True)
        self._description = description
        self._guard = guard

    def schema(self) -> dict[str, Any]:
        schema = self.inner.schema()
        return schema if self._description is None else _described(schema, {self.name: self._description})

    async def acall(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        guard = self._guard
        if guard is None or guard.state is None:
            return await self.inner.acall(arguments, ctx)
        call = ToolCall(name=self.name, arguments=arguments, id=ctx.call_id)
        refused = guard.guardrails.check(call, guard.state)
        if refused is not None:
            raise ToolFailure(refused.kind, refused.message)
        guard.state.admit(call)
        try:
            result = await self.inner.acall(arguments, ctx)
        except ToolFailure as e:
            guard.state.finish(call, ToolError(e.kind, e.message))
            raise
        except Exception as e:
            guard.state.finish(call, ToolError(ToolErrorKind.EXCEPTION, str(e)))
            raise
        guard.state.finish(call, None)
        return result


@dataclasses.dataclass
class _Guard:
    guardrails: Guardrails
    state: GuardrailState | None = None


class VariantEnvironment(Environment):
    """One rollout's environment under a variant: the inner environment, its tools re-described and guarded.

    It defines no public methods of its own, so its only tools are the inner environment's."""

    def __init__(self, inner: Environment, descriptions: dict[str, str], guardrails: Guardrails | None):
        self._inner = inner
        self._descriptions = descriptions
        self._guard = _Guard(guardrails) if guardrails is not None else None

    @property  # type: ignore[override]
    def done(self) -> bool:
        return bool(self._inner.done)

    async def asetup(self, row: TaskRow) -> None:
        await self._inner.asetup(row)
        if self._guard is not None:
            self._guard.state = self._guard.guardrails.start(row)

    async def aclose(self) -> None:
        await self._inner.aclose()

    def tools(self) -> list[Tool]:
        return [VariantTool(t, self._descriptions.get(t.name), self._guard) for t in self._inner.tools()]


def apply_variant(env: EnvSpec, rows: list[TaskRow], variant: Variant | None) -> tuple[EnvSpec, list[TaskRow]]:
    """The environment and task rows as ``variant`` shows them (``None``: unchanged).

    The grader is the environment's own, so every variant is scored by the same grader; it reads the
    reference fields of the row, which a variant never changes."""
    if variant is None:
        return env, rows
    if not variant.tool_descriptions and variant.guardrails is None:
        return env, [rewrite_row(r, variant) for r in rows]
    guardrails = Guardrails(variant.guardrails) if variant.guardrails is not None else None
    inner_make = env.make_env

    def make_env(row: TaskRow) -> Environment | None:
        inner = inner_make(row)
        return None if inner is None else VariantEnvironment(inner, variant.tool_descriptions, guardrails)

    return dataclasses.replace(env, make_env=make_env), [rewrite_row(r, variant) for r in rows]
