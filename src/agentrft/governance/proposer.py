"""Reflective prompt mutation: a chat model reads failed rollouts and writes a better prompt.

In the spirit of GEPA (Agrawal et al., 2025, "GEPA: Reflective Prompt Evolution
Can Outperform Reinforcement Learning") and DSPy's optimizers: instead of
sampling prompt edits blindly, a proposer model sees the current system prompt
and tool descriptions together with a few trajectories the current best variant
failed (the conversation, each tool call with its result or error, the grade)
and proposes a new system prompt and/or tool descriptions as JSON. The
optimizer evaluates the proposal on the same tasks as every other variant and
keeps it only if the paired statistics say it is better.

The proposer is any OpenAI-compatible chat-completions endpoint, reached through
the model graders' client (:class:`~agentrft.graders.model_graders.OpenAIChatJudge`:
a total deadline per request, a cap on the reply size). Its URL is the
operator's, from the optimize config. A reply that is not the JSON asked for,
or a request that fails, is recorded in the report and skipped; it never stops
the optimization.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agentrft.evaluation import GradedRollout
from agentrft.governance.variants import Variant

__all__ = ["ProposalError", "ProposerConfig", "build_prompt", "make_client", "parse_proposal", "proposed_variant",
           "render_failure"]

MAX_TOOL_RESULT_CHARS = 600
"""A tool result longer than this is cut in the proposer's prompt (the failure, not the document, matters)."""


class ProposerConfig(BaseModel):
    """Where the proposer model is served and how much it is asked."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    base_url: str
    """OpenAI-compatible API root, e.g. ``http://127.0.0.1:8000/v1``."""
    model: str
    """Model name sent with each request."""
    api_key_env: str | None = None
    """Environment variable holding the API key (the key itself never goes in a config); unset: ``EMPTY``."""
    rounds: int = Field(1, ge=0)
    """Proposals to request, one after another, each from the failures of the best variant so far."""
    n_failures: int = Field(3, ge=1)
    """Failed rollouts shown to the proposer per round."""
    timeout_s: float = Field(120.0, gt=0)
    """Deadline of each request (connect, headers and the whole reply)."""
    temperature: float = Field(0.7, ge=0)
    """Sampling temperature of the proposer."""


class ProposalError(Exception):
    """The proposer's reply is not a usable proposal."""


def make_client(config: ProposerConfig):
    """A :class:`~agentrft.graders.model_graders.JudgeClient` for the proposer's endpoint."""
    from agentrft.graders.model_graders import JudgeConfig, OpenAIChatJudge

    key = os.environ.get(config.api_key_env) if config.api_key_env else None
    return OpenAIChatJudge(JudgeConfig(base_url=config.base_url, api_key=key or "EMPTY", model=config.model,
                                       timeout_s=config.timeout_s, max_retries=1, format_instructions=False))


def render_failure(g: GradedRollout) -> str:
    """One failed rollout as text: the conversation after the system prompt, tool calls and errors, the grade."""
    t = g.trajectory
    lines = [f"## Task {t.task_id} (reward {g.grade.reward:.3f}, stop: "
             f"{t.stop_reason.value if t.stop_reason else 'none'})"]
    for m in t.messages:
        role = m.get("role")
        if role == "system":
            continue
        content = m.get("content") or ""
        if role == "tool":
            content = content if len(content) <= MAX_TOOL_RESULT_CHARS else content[:MAX_TOOL_RESULT_CHARS] + " [...]"
            lines.append(f"[tool {m.get('name', '')}] {content}")
            continue
        lines.append(f"[{role}] {content}")
        for c in m.get("tool_calls") or []:
            fn = c.get("function", c)
            lines.append(f"[{role} calls] {fn.get('name')}({fn.get('arguments')})")
    errors = [f"turn {r.turn} {r.call.name}: {r.error.kind.value}: {r.error.message}" for r in t.tool_calls
              if r.error is not None]
    if errors:
        lines.append("Tool errors: " + "; ".join(errors))
    if g.grade.error_messages:
        lines.append("Grader notes: " + "; ".join(g.grade.error_messages))
    reference = {k: v for k, v in g.row.items() if k not in ("messages", "tools", "id")}
    if reference:
        lines.append("Reference fields: " + json.dumps(reference, ensure_ascii=False, default=str)[:400])
    return "\n".join(lines)


def build_prompt(system_prompt: str | None, tools: list[dict[str, Any]], failures: list[GradedRollout]) -> list[dict]:
    """The chat messages sent to the proposer: the current prompt and tools, the failures, the reply format."""
    tool_lines = []
    for schema in tools:
        fn = schema.get("function", schema)
        params = ", ".join((fn.get("parameters") or {}).get("properties") or {})
        tool_lines.append(f"- {fn.get('name')}({params}): {fn.get('description', '')}")
    user = "\n\n".join([
        "An agent answers tasks with tools. Below are its current system prompt, its tools with their "
        "descriptions, and rollouts it failed. Find what in the instructions made it fail and rewrite them.",
        "# Current system prompt\n" + (system_prompt or "(none)"),
        "# Tools\n" + ("\n".join(tool_lines) or "(none)"),
        "# Failed rollouts\n" + "\n\n".join(render_failure(g) for g in failures),
        '# Reply\nOnly a JSON object: {"system_prompt": "...", "tool_descriptions": {"TOOL_NAME": "..."}}. '
        "Both keys are optional; leave out what should not change. Keep tool names as they are.",
    ])
    return [{"role": "system", "content": "You improve the instructions of tool-using AI agents."},
            {"role": "user", "content": user}]


def parse_proposal(text: str, tool_names: set[str]) -> dict[str, Any]:
    """``{"system_prompt"?: str, "tool_descriptions"?: {name: str}}`` from the proposer's reply.

    A fenced ```json block is unwrapped; anything else than that object -- other keys, a tool that does not
    exist, a non-string value, an empty proposal -- is a :class:`ProposalError`."""
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    body = (fenced.group(1) if fenced else text).strip()
    try:
        data = json.loads(body)
    except json.JSONDecodeError as e:
        raise ProposalError(f"not JSON ({e.msg} at char {e.pos}): {text[:200]!r}") from None
    if not isinstance(data, dict):
        raise ProposalError(f"expected a JSON object, got {type(data).__name__}")
    extra = sorted(set(data) - {"system_prompt", "tool_descriptions"})
    if extra:
        raise ProposalError(f"unexpected key(s) {extra}")
    out: dict[str, Any] = {}
    prompt = data.get("system_prompt")
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ProposalError("system_prompt must be a non-empty string")
        out["system_prompt"] = prompt
    descriptions = data.get("tool_descriptions")
    if descriptions:
        if not isinstance(descriptions, dict) or \
                not all(isinstance(v, str) and v.strip() for v in descriptions.values()):
            raise ProposalError("tool_descriptions must map tool names to non-empty strings")
        unknown = sorted(set(descriptions) - tool_names)
        if unknown:
            raise ProposalError(f"tool_descriptions names unknown tool(s) {unknown}; tools: {sorted(tool_names)}")
        out["tool_descriptions"] = dict(descriptions)
    if not out:
        raise ProposalError("the proposal changes nothing")
    return out


def proposed_variant(parent: Variant | None, proposal: dict[str, Any], name: str, round_: int) -> Variant:
    """The parent variant (``None``: the baseline) with the proposal's prompt and descriptions on top."""
    base = parent.model_dump(exclude={"name", "proposed_by"}) if parent is not None else {}
    if "system_prompt" in proposal:
        base.update(system_prompt=proposal["system_prompt"], system_prompt_mode="replace")
    if "tool_descriptions" in proposal:
        base["tool_descriptions"] = {**base.get("tool_descriptions", {}), **proposal["tool_descriptions"]}
    return Variant.model_validate({**base, "name": name, "proposed_by": f"proposer round {round_}"})
