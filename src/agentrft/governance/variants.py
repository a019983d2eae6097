"""Prompt, tool and guardrail variants, applied around an environment without touching it.

What a variant changes is what the model sees and may do, never how it is
measured: the system message of every task row, the description of a tool in
the schemas rendered into the prompt, how long a tool result may be before it
is truncated, the rollout's budgets (turns, tokens, tool calls), and guardrails
(allow-lists, per-tool caps, argument constraints). Sampling settings
(temperature, top-p, seed) are the measurement's and are refused here, so two
variants differ only by what they are meant to test.

How: :mod:`agentrft.tools.presentation` applies them around the environment and the task rows,
as a job's ``prompt`` section is applied; budgets and truncation are a
:class:`~agentrft.config.RolloutConfig` with the variant's values.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agentrft.config import RolloutConfig
from agentrft.tools import presentation
from agentrft.tools.environment import EnvSpec
from agentrft.tools.guardrails import GuardrailConfig
from agentrft.tools.presentation import PresentedEnvironment, PresentedTool
from agentrft.types import TaskRow

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
    return presentation.rewrite_row(row, variant.system_prompt, variant.system_prompt_mode, variant.tool_descriptions)


VariantTool = PresentedTool
VariantEnvironment = PresentedEnvironment


def apply_variant(env: EnvSpec, rows: list[TaskRow], variant: Variant | None) -> tuple[EnvSpec, list[TaskRow]]:
    """The environment and task rows as ``variant`` shows them (``None``: unchanged), through
    :func:`agentrft.tools.presentation.present`.

    The grader is the environment's own, so every variant is scored by the same grader; it reads the
    reference fields of the row, which a variant never changes."""
    if variant is None:
        return env, rows
    return presentation.present(env, rows, variant.system_prompt, variant.system_prompt_mode,
                                variant.tool_descriptions, variant.guardrails)
