"""How a job presents its tasks and tools to the model: system prompt, tool descriptions, guardrails.

What the model sees and may do, set around an environment without editing it
(the ``prompt`` section of a job, :class:`~agentrft.config.PromptConfig`, and
the variants ``agentrft optimize`` compares, :mod:`agentrft.governance.variants`):

* system prompt: each task row gets a copy whose first ``system`` message is
  replaced (``replace``) or prefixed (``prepend``, a blank line between), or a
  new first message when the row has none; the episode loop renders rows as
  given, so the prompt tokens carry the new text;
* tool descriptions: :func:`present` wraps the :class:`EnvSpec`'s ``make_env``
  so each rollout's environment is a :class:`PresentedEnvironment`, whose
  ``tools()`` are the inner tools wrapped by :class:`PresentedTool` (same
  name, arguments and behaviour; ``schema()`` with the new description).
  Tools a row declares itself (``row["tools"]``) are rewritten in the row copy;
* guardrails: the same :class:`~agentrft.tools.guardrails.Guardrails` class the
  executor applies, checked in :meth:`PresentedTool.acall` before the inner
  tool runs; a refusal is the typed ``guardrail`` error a guarded executor
  records. Each call is checked as it starts, in call order (the executor's
  own guardrails check a turn's calls before any of them starts).

The grader is the environment's own and reads the rows' reference fields,
which presentation never changes.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Literal

from pydantic import ValidationError

from agentrft.config_sections import PromptConfig
from agentrft.errors import ConfigError
from agentrft.tools.base import Tool, ToolContext, ToolFailure
from agentrft.tools.environment import Environment, EnvSpec
from agentrft.tools.guardrails import GuardrailConfig, Guardrails, GuardrailState
from agentrft.types import TaskRow, ToolCall, ToolError, ToolErrorKind

__all__ = ["PresentedEnvironment", "PresentedTool", "present", "present_prompt", "rewrite_row"]


def rewrite_row(row: TaskRow, system: str | None = None, system_mode: Literal["replace", "prepend"] = "replace",
                tool_descriptions: dict[str, str] | None = None) -> TaskRow:
    """A copy of ``row`` with ``system`` as its system prompt and new descriptions of the row's own tools."""
    if system is None and not tool_descriptions:
        return row
    out = dict(row)
    if system is not None:
        messages = [dict(m) for m in row.get("messages") or []]
        if messages and messages[0].get("role") in ("system", "developer"):
            old = messages[0].get("content")
            text = system
            if system_mode == "prepend" and old:
                text = f"{system}\n\n{old if isinstance(old, str) else _text(old)}"
            messages[0] = {**messages[0], "role": "system", "content": text}
        else:
            messages.insert(0, {"role": "system", "content": system})
        out["messages"] = messages
    if tool_descriptions and row.get("tools"):
        out["tools"] = [_described(schema, tool_descriptions) for schema in row["tools"]]
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


class PresentedTool:
    """A tool as the job presents it: the inner tool's name and behaviour, a new description, guardrails."""

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


class PresentedEnvironment(Environment):
    """One rollout's environment as presented: the inner environment, its tools re-described and guarded.

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
        return [PresentedTool(t, self._descriptions.get(t.name), self._guard) for t in self._inner.tools()]


def present(env: EnvSpec, rows: list[TaskRow], system: str | None = None,
            system_mode: Literal["replace", "prepend"] = "replace", tool_descriptions: dict[str, str] | None = None,
            guardrails: GuardrailConfig | None = None) -> tuple[EnvSpec, list[TaskRow]]:
    """The environment and task rows as presented (unchanged when nothing is set)."""
    shown = [rewrite_row(r, system, system_mode, tool_descriptions) for r in rows]
    if not tool_descriptions and guardrails is None:
        return env, shown
    guards = Guardrails(guardrails) if guardrails is not None else None
    descriptions = dict(tool_descriptions or {})
    inner_make = env.make_env

    def make_env(row: TaskRow) -> Environment | None:
        inner = inner_make(row)
        return None if inner is None else PresentedEnvironment(inner, descriptions, guards)

    return dataclasses.replace(env, make_env=make_env), shown


def present_prompt(prompt: PromptConfig, env: EnvSpec, *row_lists: list[TaskRow]) -> tuple[EnvSpec, list[list[TaskRow]]]:
    """A job's ``prompt`` section applied to its environment and each list of rows (training, validation)."""
    guardrails = None
    if prompt.guardrails is not None:
        try:
            guardrails = GuardrailConfig.model_validate(prompt.guardrails)
        except ValidationError as e:
            raise ConfigError("prompt.guardrails: " + "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in e.errors())) from None
    shown_env, lists = env, []
    for rows in row_lists:
        shown_env, shown = present(env, rows, prompt.system, prompt.system_mode, prompt.tool_descriptions or None,
                                   guardrails)
        lists.append(shown)
    return shown_env, lists
