"""Play a scripted policy against a real environment: demonstrations and oracle checks.

Environments ship scripted policies (oracles) whose assistant turns are fixed
in advance. Playing one executes its tool calls for real, through the same
:class:`~agentrft.tools.executor.ToolExecutor` as a rollout (validation,
budget, typed error records), and returns the trajectory without tokens: its
messages are an SFT/DPO demonstration, its tool-call records are what
graders read. One implementation for every environment.
"""

from __future__ import annotations

from typing import Callable

from agentrft.rollout.episode import normalize_messages
from agentrft.tools.environment import Environment
from agentrft.tools.executor import ToolExecutor, ToolLimits
from agentrft.types import Message, StopReason, TaskRow, ToolCall, Trajectory

Policy = Callable[[TaskRow], list[Message]]


def play_script(row: TaskRow, script: list[Message], env: Environment, *, close: bool = True,
                limits: ToolLimits | None = None) -> Trajectory:
    """Execute ``script`` (assistant messages) on ``env`` set up from ``row``.

    Stops at a turn without tool calls (``ANSWER``), when the environment is
    done (``ENV_DONE``), or when the script ends (``stop_reason`` None). With
    ``close=False`` the environment is left open so a test can inspect it.
    """
    traj = Trajectory(task_id=str(row.get("id", "")), messages=normalize_messages(row.get("messages") or []))
    try:
        env.setup(row)
        executor = ToolExecutor(env.tools(), limits, trace_id=traj.trace_id, item=row)
        for turn, message in enumerate(script, start=1):
            traj.messages.append(message)
            traj.turns = turn
            calls = [ToolCall.from_openai(c) for c in message.get("tool_calls") or []]
            if not calls:
                traj.stop_reason = StopReason.ANSWER
                break
            records = executor.execute(calls, turn)
            traj.tool_calls.extend(records)
            traj.messages.extend(
                {"role": "tool", "tool_call_id": r.call.id, "name": r.call.name, "content": r.result or ""}
                for r in records
            )
            if env.done:
                traj.stop_reason = StopReason.ENV_DONE
                break
    finally:
        if close:
            env.close()
    return traj
