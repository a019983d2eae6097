"""The multi-turn episode loop: sample, parse tool calls, run tools, repeat.

Many rollouts advance in lockstep so each assistant turn is one batched call
to the sampler; the tool calls of every active rollout in that turn then run
concurrently on the tools event loop. Each rollout gets a fresh environment
built from its task row and closed at the end, whatever happens. The per-turn
step (:func:`start_episode`, :func:`advance_episodes`) is shared with the
per-episode collector (:mod:`agentrft.rollout.collector`), which advances each
rollout on its own instead of waiting for the turn's slowest tool.

Token fidelity: the trajectory's token record is built by appending, never by
re-rendering. Prompt tokens come from the chat format once; sampled tokens are
appended exactly as the sampler returned them (with their logprobs); every
token the system adds afterwards (end of turn, tool results, the next
generation prompt) is appended with kind ``env`` and is never trained on.

A bad rollout is data, not a crash: tool failures are typed records; a failing
environment set-up, sampler error or transport failure ends that rollout with a
typed error and ``StopReason.INFRA_ERROR`` (excluded from training, counted).

Settings come from :class:`~agentrft.config.RolloutConfig`, the one rollout
config every caller (training, a run's eval, ``agentrft eval``) passes in.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from agentrft.config import RolloutConfig
from agentrft.models.chat_format import ChatFormat, ParsedAssistant
from agentrft.rollout.sampler import Completion, Sampler, SamplingParams
from agentrft.tools.base import Tool, run_sync
from agentrft.tools.environment import Environment
from agentrft.tools.executor import ToolExecutor, ToolLimits
from agentrft.tools.guardrails import Guardrails
from agentrft.tools.schema import SchemaOnlyTool
from agentrft.types import (
    Message,
    StopReason,
    TaskRow,
    ToolCallRecord,
    ToolErrorKind,
    Trajectory,
    TrajectoryError,
)


def normalize_content(content: Any) -> str:
    """OpenAI content may be a string, None, or a list of ``{"type": "text", "text": ...}`` parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def normalize_messages(messages: Iterable[Message]) -> list[Message]:
    out = []
    for m in messages:
        m = dict(m)
        if m.get("role") == "developer":  # OpenAI's newer name for the system role
            m["role"] = "system"
        m["content"] = normalize_content(m.get("content"))
        out.append(m)
    return out


@dataclass
class _Live:
    """A rollout in progress."""

    traj: Trajectory
    row: TaskRow
    env: Environment | None
    executor: ToolExecutor | None
    tools: list[Tool] = field(default_factory=list)
    done: bool = False
    pending: ParsedAssistant | None = None  # the parsed assistant turn awaiting its tool calls
    sampled: list[int] = field(default_factory=list)  # token ids sampled this turn


def tools_for_row(env: Environment | None, row: TaskRow) -> list[Tool]:
    """The environment's tools plus schema-only tools declared by the row and not implemented."""
    tools: list[Tool] = list(env.tools()) if env is not None else []
    names = {t.name for t in tools}
    for schema in row.get("tools") or []:
        fn = schema.get("function", schema)
        if fn.get("name") not in names:
            tools.append(SchemaOnlyTool(schema))
            names.add(fn.get("name"))
    return tools


def run_episodes(
    tasks: list[TaskRow],
    make_env: Callable[[TaskRow], Environment | None],
    sampler: Sampler,
    chat_format: ChatFormat,
    config: RolloutConfig = RolloutConfig(),
    samples_per_task: int = 1,
    on_finished: Callable[[Trajectory], None] | None = None,
    guardrails: Guardrails | None = None,
) -> list[Trajectory]:
    """Roll out every task ``samples_per_task`` times; returns trajectories in task-major order.

    ``guardrails`` (allow-lists, per-tool caps, argument constraints) are
    checked before every tool call; violations are typed ``guardrail`` errors.
    """
    live: list[_Live] = []
    for row in tasks:
        for k in range(samples_per_task):
            live.append(start_episode(row, k, make_env, chat_format, config, guardrails))
    for lv in live:
        if lv.done and on_finished:
            on_finished(lv.traj)

    turn = 0
    while True:
        active = [lv for lv in live if not lv.done]
        if not active:
            break
        turn += 1
        for lv in advance_episodes(active, sampler, chat_format, config, turn, turn_seed(config, turn)):
            if on_finished:
                on_finished(lv.traj)
    return [lv.traj for lv in live]


def turn_seed(config: RolloutConfig, turn: int) -> int | None:
    """The seed of turn ``turn``'s sampler call (None: fresh randomness)."""
    return None if config.seed is None else (config.seed * 1_000_003 + turn) % (2**31)


def advance_episodes(active: list[_Live], sampler: Sampler, chat_format: ChatFormat, config: RolloutConfig,
                     turn: int, seed: int | None) -> list[_Live]:
    """One turn of the ``active`` rollouts: one ``sampler`` call for all of them (seeded with ``seed``), then
    their tool calls, concurrently. Returns the rollouts this turn ended, finished (environment closed)."""
    _sample_turn(active, sampler, chat_format, config, turn, seed)
    _run_tools(active, chat_format, config, turn)
    ended = [lv for lv in active if lv.done]
    for lv in ended:
        _finish(lv)
    return ended


def start_episode(row: TaskRow, k: int, make_env: Callable[[TaskRow], Environment | None], chat_format: ChatFormat,
                  config: RolloutConfig, guardrails: Guardrails | None = None) -> _Live:
    """Sample ``k`` of ``row``: its environment set up and its prompt rendered (or, if that failed, finished
    as an ``env_setup`` infra failure with ``done`` set)."""
    messages = normalize_messages(row.get("messages") or [])
    traj = Trajectory(task_id=str(row.get("id", "")), messages=messages, group_index=k)
    traj.timings.update(start=time.time(), sampling_s=0.0, tools_s=0.0)
    lv = _Live(traj=traj, row=row, env=None, executor=None)
    try:
        lv.env = make_env(row)
        if lv.env is not None:
            run_sync(lv.env.asetup(row))
        lv.tools = tools_for_row(lv.env, row)
        lv.executor = ToolExecutor(
            lv.tools,
            ToolLimits(timeout_s=config.tool_timeout_s, max_calls=config.max_tool_calls,
                       max_output_chars=config.max_tool_output_chars),
            trace_id=traj.trace_id,
            item=row,
            guardrails=guardrails,
        )
        schemas = [t.schema() for t in lv.tools] or None
        traj.append_tokens(chat_format.prompt_tokens(messages, schemas), "prompt")
    except Exception as e:  # a broken environment or row is this rollout's failure, not the run's
        traj.errors.append(TrajectoryError("env_setup", f"{type(e).__name__}: {e}"))
        traj.stop_reason = StopReason.INFRA_ERROR
        lv.done = True
        _finish(lv)
    return lv


def _sample_turn(active: list[_Live], sampler: Sampler, chat_format: ChatFormat, config: RolloutConfig,
                 turn: int, seed: int | None) -> None:
    params = SamplingParams(
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        stop_token_ids=tuple(chat_format.stop_token_ids),
        seed=seed,
    )
    t0 = time.perf_counter()
    try:
        completions: list[Completion] = sampler.generate([lv.traj.token_ids for lv in active], params)
    except Exception as e:
        for lv in active:
            lv.traj.errors.append(TrajectoryError("sampler", f"{type(e).__name__}: {e}", turn))
            lv.traj.stop_reason = StopReason.INFRA_ERROR
            lv.done = True
        return
    dt = time.perf_counter() - t0
    for lv, comp in zip(active, completions):
        traj = lv.traj
        traj.timings["sampling_s"] += dt
        if not comp.token_ids and comp.finish_reason == "length":  # the model's context window is full
            traj.stop_reason = StopReason.CONTEXT_LIMIT
            lv.done = True
            continue
        budget = config.max_total_tokens - traj.num_tokens
        ids, lps = comp.token_ids, comp.logprobs
        over_budget = len(ids) > budget
        if over_budget:
            ids, lps = ids[: max(budget, 0)], lps[: max(budget, 0)]
        traj.append_tokens(ids, "sampled", lps)
        traj.turns = turn
        text = chat_format.decode(ids)
        parsed = chat_format.parse_assistant(text)
        traj.messages.append(chat_format.assistant_message(parsed))
        lv.pending = parsed
        lv.sampled = ids
        if over_budget:
            _close_turn(lv, chat_format)
            traj.stop_reason = StopReason.MAX_TOKENS
            lv.done = True


def _close_turn(lv: _Live, chat_format: ChatFormat) -> None:
    lv.traj.append_tokens(chat_format.turn_end_tokens(lv.sampled), "env")


def _run_tools(active: list[_Live], chat_format: ChatFormat, config: RolloutConfig, turn: int) -> None:
    """Run each active rollout's tool calls of this turn, record them, and end or continue the rollout.

    A turn that calls a schema-only tool is the rollout's output (OpenAI's function-calling mode): its
    implemented calls still run and are recorded, its schema-only calls are recorded unrun (with any
    schema violation), and the rollout ends with every call of the turn in its final message."""
    to_run: list[tuple[_Live, list, list]] = []  # (rollout, calls to run, schema-only calls)
    for lv in active:
        if lv.done:
            continue
        parsed = lv.pending
        if not parsed.tool_calls and not parsed.parse_errors:
            _close_turn(lv, chat_format)
            lv.traj.stop_reason = StopReason.ANSWER
            lv.done = True
            continue
        outputs = [c for c in parsed.tool_calls if lv.executor.is_schema_only(c)]
        to_run.append((lv, [c for c in parsed.tool_calls if not lv.executor.is_schema_only(c)], outputs))
    if not to_run:
        return

    async def run_all():
        return await asyncio.gather(*(lv.executor.aexecute(calls, turn) for lv, calls, _ in to_run))

    t0 = time.perf_counter()
    results: list[list[ToolCallRecord]] = run_sync(run_all())
    dt = time.perf_counter() - t0
    for (lv, _calls, outputs), executed in zip(to_run, results):
        traj = lv.traj
        traj.timings["tools_s"] += dt
        parsed = lv.pending
        by_id = {id(r.call): r for r in list(executed) + lv.executor.record_output_calls(outputs, turn)}
        records = [by_id[id(c)] for c in parsed.tool_calls]  # in the order the model wrote them
        records += [lv.executor.record_parse_error(raw, msg, turn) for raw, msg in _parse_error_pairs(parsed)]
        traj.tool_calls.extend(records)
        tool_messages = [
            {"role": "tool", "tool_call_id": r.call.id, "name": r.call.name, "content": r.result or ""}
            for r in records
        ]
        if not outputs:  # with schema-only calls the calls are the output; nothing is shown back
            traj.messages.extend(tool_messages)
        _close_turn(lv, chat_format)
        if any(r.error is not None and r.error.kind == ToolErrorKind.INFRASTRUCTURE for r in records):
            traj.stop_reason = StopReason.INFRA_ERROR
            traj.errors.append(TrajectoryError("infrastructure", "a tool transport failed after retries", turn))
            lv.done = True
        elif outputs:
            traj.stop_reason = StopReason.TOOL_CALLS_OUTPUT
            lv.done = True
        elif lv.env is not None and lv.env.done:
            traj.stop_reason = StopReason.ENV_DONE
            lv.done = True
        elif turn >= config.max_turns:
            traj.stop_reason = StopReason.MAX_TURNS
            lv.done = True
        else:
            traj.append_tokens(chat_format.followup_tokens(tool_messages), "env")
            if traj.num_tokens >= config.max_total_tokens:
                traj.stop_reason = StopReason.MAX_TOKENS
                lv.done = True


def _parse_error_pairs(parsed: ParsedAssistant) -> list[tuple[str, str]]:
    """(raw text, message) for each malformed tool call of an assistant turn."""
    raws = list(parsed.malformed)
    raws += [""] * (len(parsed.parse_errors) - len(raws))
    return list(zip(raws, parsed.parse_errors))


def _finish(lv: _Live) -> None:
    traj = lv.traj
    traj.timings["total_s"] = time.time() - traj.timings.get("start", time.time())
    if lv.env is not None:
        try:
            run_sync(lv.env.aclose())
        except Exception as e:
            traj.errors.append(TrajectoryError("env_close", f"{type(e).__name__}: {e}"))
    traj.validate()
