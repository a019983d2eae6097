"""Scripted policies for the coding env, and playing them against a real environment.

What: :func:`oracle` writes the assistant turns of an agent that knows the fix
(``read_file`` the module -> ``replace_in_file`` with the row's ``solution``
-> ``run_tests`` -> a one-sentence answer), one tool call per turn, in OpenAI
chat format; :func:`do_nothing` answers in text and changes nothing.
:func:`oracle_conversation` plays a policy against a fresh :class:`CodingEnv`
(real sandbox, real :class:`~agentrft.tools.executor.ToolExecutor`) and
returns the complete message list -- system, user, assistant tool calls, tool
results with ``tool_call_id``, final answer -- a demonstration for SFT/DPO.

Why the oracle reads the reference ``solution``: it is a scripted upper bound
for tests and demonstrations, not an agent. Its tool results are real, so a
broken template, runner or grader shows up as an oracle scoring below 1.
"""

from __future__ import annotations

from collections.abc import Callable

from agentrft.envs.coding.env import CodingEnv
from agentrft.rollout.scripted import play_script
from agentrft.types import Message, TaskRow, ToolCall, Trajectory

__all__ = ["ORACLES", "Policy", "do_nothing", "oracle", "oracle_conversation", "play"]

Policy = Callable[[TaskRow], list[Message]]


def oracle(row: TaskRow) -> list[Message]:
    """Read the module, apply the known fix, run the tests, say what was fixed."""
    fix = row["solution"]
    calls = [
        ("read_file", {"path": fix["path"]}),
        ("replace_in_file", {"path": fix["path"], "old": fix["old"], "new": fix["new"]}),
        ("run_tests", {}),
    ]
    turns: list[Message] = [
        {"role": "assistant", "content": "", "tool_calls": [ToolCall(name, args, id=f"call_{i}").to_openai()]}
        for i, (name, args) in enumerate(calls)
    ]
    old, new = fix["old"].strip(), fix["new"].strip()
    turns.append({"role": "assistant", "content": f"Fixed the bug in {fix['path']}: replaced `{old}` with `{new}`."})
    return turns


def do_nothing(row: TaskRow) -> list[Message]:
    """Claims the code is fine without looking at it or changing anything."""
    return [{"role": "assistant", "content": "I checked the code and it looks correct; no changes are needed."}]


ORACLES: dict[str, Policy] = {"oracle": oracle, "do_nothing": do_nothing}


def play(row: TaskRow, policy: str | Policy = "oracle", env: CodingEnv | None = None) -> Trajectory:
    """Run a scripted policy against a real :class:`CodingEnv`; the trajectory (messages, tool records, no tokens).

    Pass ``env`` to inspect its sandbox afterwards (the caller closes it);
    otherwise a fresh one is made and closed here.
    """
    script = (ORACLES[policy] if isinstance(policy, str) else policy)(row)
    own_env = env is None
    return play_script(row, script, CodingEnv() if own_env else env, close=own_env)


def oracle_conversation(row: TaskRow, policy: str | Policy = "oracle") -> list[Message]:
    """The full message list of ``policy`` played on ``row``: a demonstration conversation."""
    return play(row, policy).messages
