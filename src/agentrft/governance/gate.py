"""The promotion gate: what a candidate model must show before an alias points at it.

A gate spec (``gate.yaml``, :class:`GateSpec`) names held-out tasks and the
thresholds a candidate must meet. :func:`gate_checks` turns the graded eval of
the candidate -- and, when the alias already has a model, of that current model
on the same tasks with the same seeds -- into one :class:`GateCheck` per
declared threshold:

=========================== ====================================================================
``min_accuracy``            candidate accuracy >= this (absolute)
``max_accuracy_drop``       current accuracy - candidate accuracy, paired task by task, <= this
``max_category_drop``       the same per task category (``tasks.category_key``); the worst counts
``max_tool_calls_per_task`` mean tool calls per rollout <= this (absolute)
``max_mean_tokens``         mean tokens per rollout (prompt, sampled and tool output) <= this (absolute)
``max_tokens_increase``     candidate tokens / current tokens - 1 <= this (0.1: at most 10 % dearer)
``max_tool_misuse_rate``    share of rollouts with a misused tool call <= this (absolute)
``max_probe_score``         highest reward the grader gives a reward-hacking probe <= this (absolute)
=========================== ====================================================================

A misused call (:func:`tool_misuse`) is one outside ``allowed_tools``, one whose arguments match a
``forbidden_arguments`` rule, or one a guardrail refused. The probes are
:func:`agentrft.graders.probes.make_probes` built from the first ``probe_rows`` gate tasks and graded by the
gate's grader: a grader that rewards a probe would also reward a policy that learned the trick, so the
accuracy above could not be trusted.

Why paired: the candidate and the current model run the same tasks with the same seeds (greedy by default),
so the drop is counted on the tasks themselves rather than from two noisy means; the exact McNemar p-value
(:func:`agentrft.evaluation.paired_accuracy`) is reported beside it. The relative checks need a current
model; the first promotion of an alias runs the absolute ones only.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agentrft.config import RolloutConfig, _format_validation_error, read_yaml_mapping
from agentrft.errors import ConfigError
from agentrft.evaluation import GradedRollout, is_correct, paired_accuracy, summarize
from agentrft.types import ToolErrorKind, Trajectory

__all__ = ["GateCheck", "GateSpec", "GateTasks", "GateThresholds", "MisuseRule", "gate_checks", "gate_tasks",
           "load_gate_spec", "probe_score", "tool_misuse"]


class GateTasks(BaseModel):
    """The held-out tasks both models are measured on."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    env: str | None = None
    """Built-in environment (``finance``, ``support``, ...) or ``package.module:function``. Default: finance,
    or, with ``file`` and no ``env``, the rows' own tools."""
    split: str = "validation"
    """The environment's split (ignored with ``file``)."""
    file: str | None = None
    """A JSONL task file (OpenAI RFT format) instead of a split; relative to the gate file's folder."""
    tools: str | None = None
    """tools.yaml (HTTP endpoints, MCP servers) for ``file`` tasks without ``env``."""
    grader: str | None = None
    """A grader spec (JSON) replacing the environment's grader; required for ``file`` without ``env``."""
    limit: int | None = Field(None, ge=1)
    """Measure on the first N tasks only."""
    category_key: str = "category"
    """The task field that names a task's category for ``max_category_drop`` (finance: ``metric``)."""


class MisuseRule(BaseModel):
    """A forbidden argument: a call of ``tool`` (any tool if unset) whose ``argument`` (the whole arguments
    object as JSON if unset) matches ``pattern`` (``re.search``; non-string values as JSON)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    tool: str | None = None
    """The tool the rule applies to; unset: every tool."""
    argument: str | None = None
    """The argument checked; unset: the whole arguments object, as JSON."""
    pattern: str
    """A Python regular expression searched for in the value."""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as e:
            raise ValueError(f"not a regular expression: {e}") from None
        return value


class GateThresholds(BaseModel):
    """The declared thresholds; an unset one is not checked. See the module docstring for each."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    min_accuracy: float | None = Field(None, ge=0, le=1)
    """Candidate accuracy must be at least this."""
    max_accuracy_drop: float | None = Field(None, ge=-1, le=1)
    """Current minus candidate accuracy on the same tasks must be at most this (0: no worse; negative: must
    improve). Needs a current model."""
    max_category_drop: float | None = Field(None, ge=-1, le=1)
    """The largest per-category accuracy drop must be at most this. Needs a current model."""
    max_tool_calls_per_task: float | None = Field(None, ge=0)
    """Mean tool calls per rollout must be at most this."""
    max_mean_tokens: float | None = Field(None, gt=0)
    """Mean tokens per rollout (prompt, sampled and tool output: what a rollout costs to run) at most this."""
    max_tokens_increase: float | None = Field(None, ge=-1)
    """Candidate mean tokens over the current model's, minus 1, at most this. Needs a current model."""
    max_tool_misuse_rate: float | None = Field(None, ge=0, le=1)
    """Share of rollouts with at least one misused tool call at most this."""
    max_probe_score: float | None = None
    """The highest reward the gate's grader gives any reward-hacking probe at most this."""


RELATIVE = ("max_accuracy_drop", "max_category_drop", "max_tokens_increase")
"""Thresholds measured against the current model: skipped on an alias's first promotion."""


class GateSpec(BaseModel):
    """``gate.yaml``: the tasks, how they are rolled out, and the thresholds."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    tasks: GateTasks = Field(default_factory=GateTasks)
    """The held-out tasks."""
    rollout: RolloutConfig = Field(default_factory=lambda: RolloutConfig(temperature=0.0, seed=0))
    """Rollout settings for both models (a ``RolloutConfig``; unset keys: greedy, ``temperature: 0``, and
    ``seed: 0``, then the usual defaults)."""
    accuracy_threshold: float = 0.99
    """Reward at or above which a rollout counts as correct (unless the grader reports ``correct``)."""
    thresholds: GateThresholds
    """The checks; at least one must be declared."""
    allowed_tools: list[str] | None = None
    """Tools the candidate may call; a call of any other counts as misuse (unset: any tool)."""
    forbidden_arguments: list[MisuseRule] = Field(default_factory=list)
    """Argument patterns that count a call as misuse."""
    probe_rows: int = Field(8, ge=1)
    """Gate tasks the reward-hacking probes are built from (the first N)."""
    probe_exclude: list[str] = Field(default_factory=list)
    """Probes left out of ``max_probe_score`` (a loophole you know and accept, e.g. ``buried_reference``)."""
    min_category_tasks: int = Field(1, ge=1)
    """Categories with fewer paired tasks than this are left out of ``max_category_drop``."""

    @field_validator("rollout", mode="before")
    @classmethod
    def _greedy_by_default(cls, value: Any) -> Any:
        return {"temperature": 0.0, "seed": 0, **value} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _something_is_checked(self) -> "GateSpec":
        if not any(v is not None for v in self.thresholds.model_dump().values()):
            raise ValueError("thresholds: declare at least one (a gate that checks nothing would promote anything)")
        return self


def load_gate_spec(source: str | Path | dict[str, Any]) -> GateSpec:
    """A gate spec from YAML (paths in it resolved against its folder) or a mapping (against the cwd)."""
    raw, name, folder = read_yaml_mapping(source, "gate spec")
    try:
        spec = GateSpec.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, name).replace("invalid config", "invalid gate spec")) from None
    for key in ("file", "tools", "grader"):
        value = getattr(spec.tasks, key)
        if value is not None and not Path(value).is_absolute():
            setattr(spec.tasks, key, str(folder / value))
    return spec


def gate_tasks(spec: GateSpec):
    """``(env, rows)``: the environment (with the gate's grader) and the gate's tasks, each with an ``id``."""
    from agentrft.envs.registry import task_source

    t = spec.tasks
    source = task_source(t.env, t.split, t.file, t.tools, t.grader)
    rows = [r if r.get("id") not in (None, "") else {**r, "id": f"task-{i}"} for i, r in enumerate(source.rows)]
    return source.env, rows[: t.limit] if t.limit else rows


@dataclass
class GateCheck:
    """One declared threshold, measured: ``value`` against ``threshold``, with the current model's figure."""

    name: str
    value: float
    threshold: float
    baseline: float | None
    passed: bool
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- tool misuse ------------------------------------------------------------------------


def _argument_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)


def tool_misuse(trajectory: Trajectory, allowed_tools: list[str] | None,
                rules: list[MisuseRule]) -> list[str]:
    """Why each misused call of ``trajectory`` is one (empty: none): a tool outside ``allowed_tools``, an
    argument matching a rule, or a call a guardrail refused."""
    allowed = set(allowed_tools) if allowed_tools is not None else None
    found = []
    for record in trajectory.tool_calls:
        call = record.call
        if allowed is not None and call.name not in allowed:
            found.append(f"{call.name}: not in allowed_tools")
            continue
        if record.error is not None and record.error.kind == ToolErrorKind.GUARDRAIL:
            found.append(f"{call.name}: refused by a guardrail ({record.error.message[:80]})")
            continue
        for rule in rules:
            if rule.tool is not None and rule.tool != call.name:
                continue
            if rule.argument is None:
                value = _argument_text(call.arguments)
            elif rule.argument in call.arguments:
                value = _argument_text(call.arguments[rule.argument])
            else:
                continue
            if re.search(rule.pattern, value):
                found.append(f"{call.name}: {rule.argument or 'arguments'} matches {rule.pattern!r}")
                break
    return found


# -- the checks -------------------------------------------------------------------------


def _pairs(current: list[GradedRollout], candidate: list[GradedRollout], threshold: float,
           category_key: str) -> list[tuple[str, bool, bool]]:
    """``(category, current correct, candidate correct)`` per task both scored (infra failures left out)."""
    cur = {g.trajectory.task_id: g for g in current if not g.trajectory.is_infra_failure}
    out = []
    for g in candidate:
        other = cur.get(g.trajectory.task_id)
        if other is None or g.trajectory.is_infra_failure:
            continue
        out.append((str(g.row.get(category_key, "(none)")), is_correct(other.grade, threshold),
                    is_correct(g.grade, threshold)))
    return out


def _category_drop(pairs: list[tuple[str, bool, bool]], min_tasks: int) -> tuple[float, float | None, str]:
    """``(worst drop, current accuracy there, which category)`` over categories with ``min_tasks`` pairs."""
    groups: dict[str, list[tuple[bool, bool]]] = {}
    for category, a, b in pairs:
        groups.setdefault(category, []).append((a, b))
    worst: tuple[float, float | None, str] = (float("-inf"), None, "no category")
    for category, items in sorted(groups.items()):
        if len(items) < min_tasks:
            continue
        base = sum(a for a, _ in items) / len(items)
        drop = base - sum(b for _, b in items) / len(items)
        if drop > worst[0]:
            worst = (drop, base, f"worst category {category!r} ({len(items)} tasks)")
    return (0.0, None, "no category with enough tasks") if worst[1] is None else worst


@dataclass
class _Measured:
    """What the checks read: both evals, their summaries, and the probes' top reward."""

    spec: GateSpec
    candidate: list[GradedRollout]
    current: list[GradedRollout] | None
    summary: dict[str, Any]
    current_summary: dict[str, Any] | None
    probe_score: float | None
    probe_detail: str


def _check(name: str, value: float, threshold: float, baseline: float | None, at_most: bool,
           detail: str = "") -> GateCheck:
    passed = value <= threshold if at_most else value >= threshold
    return GateCheck(name, float(value), float(threshold), None if baseline is None else float(baseline), passed,
                     detail)


def _min_accuracy(m: _Measured, t: float) -> GateCheck:
    lo, hi = m.summary["accuracy_ci95"]
    infra = m.summary["infra_failures"]
    return _check("min_accuracy", m.summary["accuracy"], t, m.current_summary and m.current_summary["accuracy"],
                  at_most=False, detail=f"{m.summary['n_rollouts']} rollouts, 95% CI [{lo:.3f}, {hi:.3f}]"
                                        + (f", {infra} infra failures left out" if infra else ""))


def _accuracy_drop(m: _Measured, t: float) -> GateCheck:
    paired = paired_accuracy(m.current, m.candidate, m.spec.accuracy_threshold)
    n = paired["n_tasks"]
    if n == 0:  # every task failed on infrastructure for one model or the other: no evidence is no pass
        return GateCheck("max_accuracy_drop", 1.0, t, None, False,
                         "no task was scored for both models (counted as a full drop)")
    base = (paired["both_correct"] + paired["only_first_correct"]) / n
    drop = (paired["only_first_correct"] - paired["only_second_correct"]) / n
    return _check("max_accuracy_drop", drop, t, base, at_most=True,
                  detail=f"{n} paired tasks: only current right {paired['only_first_correct']}, only candidate "
                         f"right {paired['only_second_correct']}, McNemar p = {paired['p_value']:.3g}")


def _category(m: _Measured, t: float) -> GateCheck:
    pairs = _pairs(m.current, m.candidate, m.spec.accuracy_threshold, m.spec.tasks.category_key)
    drop, base, detail = _category_drop(pairs, m.spec.min_category_tasks)
    return _check("max_category_drop", drop, t, base, at_most=True, detail=detail)


def _tool_calls(m: _Measured, t: float) -> GateCheck:
    return _check("max_tool_calls_per_task", m.summary["tool_calls_per_rollout"], t,
                  m.current_summary and m.current_summary["tool_calls_per_rollout"], at_most=True)


def _tokens(m: _Measured, t: float) -> GateCheck:
    return _check("max_mean_tokens", m.summary["tokens_mean"], t,
                  m.current_summary and m.current_summary["tokens_mean"], at_most=True)


def _tokens_increase(m: _Measured, t: float) -> GateCheck:
    cur, cand = m.current_summary["tokens_mean"], m.summary["tokens_mean"]
    return _check("max_tokens_increase", cand / cur - 1 if cur else 0.0, t, cur, at_most=True,
                  detail=f"{cand:.1f} vs {cur:.1f} tokens per rollout")


def _misuse(m: _Measured, t: float) -> GateCheck:
    scored = [g for g in m.candidate if not g.trajectory.is_infra_failure]
    found = [(g.trajectory.task_id, why) for g in scored
             for why in tool_misuse(g.trajectory, m.spec.allowed_tools, m.spec.forbidden_arguments)]
    misused = {task for task, _ in found}
    rate = len(misused) / len(scored) if scored else 0.0
    detail = f"{len(found)} misused calls in {len(misused)} of {len(scored)} rollouts"
    if found:
        detail += f", e.g. task {found[0][0]}: {found[0][1]}"
    return _check("max_tool_misuse_rate", rate, t, None, at_most=True, detail=detail)


def _probes(m: _Measured, t: float) -> GateCheck:
    if m.probe_score is None:
        raise ValueError("max_probe_score is declared: pass gate_checks the probe_score(...) of the gate's grader")
    return _check("max_probe_score", m.probe_score, t, None, at_most=True, detail=m.probe_detail)


_CHECKS: dict[str, Callable[[_Measured, float], GateCheck]] = {
    "min_accuracy": _min_accuracy, "max_accuracy_drop": _accuracy_drop, "max_category_drop": _category,
    "max_tool_calls_per_task": _tool_calls, "max_mean_tokens": _tokens, "max_tokens_increase": _tokens_increase,
    "max_tool_misuse_rate": _misuse, "max_probe_score": _probes,
}


def probe_score(spec: GateSpec, grade: Callable, rows: list[dict[str, Any]]) -> tuple[float | None, str]:
    """The highest reward ``grade`` gives the reward-hacking probes of the first ``probe_rows`` rows, and
    which probe earned it (None when ``max_probe_score`` is not declared)."""
    if spec.thresholds.max_probe_score is None:
        return None, ""
    from agentrft.graders.probes import run_probes

    class _Grader:  # run_probes grades through ``grader.grade(sample, item)``
        def __init__(self, fn: Callable) -> None:
            self.grade = fn

    report = run_probes(_Grader(grade), rows[: spec.probe_rows], threshold=spec.thresholds.max_probe_score)
    kept = [r for r in report.results if r.probe not in spec.probe_exclude]
    if not kept:
        return 0.0, "no probe graded"
    top = max(kept, key=lambda r: r.reward)
    flagged = sum(1 for r in kept if r.flagged)
    return top.reward, f"{flagged} of {len(kept)} probe grades above the threshold; top: {top.probe} (row {top.row})"


def gate_checks(spec: GateSpec, candidate: list[GradedRollout], current: list[GradedRollout] | None,
                probe: tuple[float | None, str] = (None, "")) -> list[GateCheck]:
    """One :class:`GateCheck` per declared threshold (in :class:`GateThresholds`' order); the relative ones only
    with a ``current`` eval. ``probe``: :func:`probe_score`'s result, required when ``max_probe_score`` is
    declared."""
    m = _Measured(spec, candidate, current, summarize(candidate, 0.0, spec.accuracy_threshold,
                                                      spec.tasks.category_key),
                  None if current is None else summarize(current, 0.0, spec.accuracy_threshold,
                                                         spec.tasks.category_key),
                  *probe)
    declared = {k: v for k, v in spec.thresholds.model_dump().items() if v is not None}
    return [_CHECKS[name](m, t) for name, t in declared.items() if current is not None or name not in RELATIVE]
