"""The coding env's grader: rebuild the agent's repository from its edits and run the real tests.

What: :func:`grade` scores one trajectory against its task row::

    reward = max(0, tests - cost)
    tests  = passed / total, re-run by the grader on the rebuilt repository
    cost   = min(MAX_COST, COST_PER_EXTRA_CALL * max(0, tool calls - row["target_tool_calls"]))

``sub_rewards`` is ``{"tests": tests, "cost": cost}`` (``cost`` is the
penalty that was subtracted; every attempted call counts, failed ones too).

Why replay instead of reading the rollout's sandbox: the environment is
closed -- its sandbox deleted -- when the rollout ends, before grading, and a
trajectory must be gradable later (from JSONL, by ``agentrft eval``). Every
change the agent made to the repository went through ``write_file`` or
``replace_in_file``, so applying their successful records
(``ToolCallRecord.error is None``), in order, with the same edit rules
(:func:`~agentrft.envs.coding.env.apply_edit`) to a fresh copy of the task's
repository rebuilds the agent's final code. It is then tested in a fresh
sandbox with pristine tests and runner. Files the agent's *code* wrote while
``run_tests`` ran are not replayed: only deliberate edits count.

Limits (threat model): the agent's module runs in the same process as the
tests, so code written to forge the runner's summary line (print a fake
``{"passed": ...}`` and exit) could fool it; the runner being pristine and the
tests unchangeable stop the easy hacks, not a determined adversary. Hidden
tests would be the next step.
"""

from __future__ import annotations

import time

from agentrft.envs.coding.env import EDIT_TOOLS, apply_edit, run_test_suite
from agentrft.envs.coding.tasks import TARGET_TOOL_CALLS, BugTask, get_task
from agentrft.errors import AgentRFTError
from agentrft.graders.base import OTHER_ERROR, SAMPLE_PARSE_ERROR, no_errors
from agentrft.tools.base import ToolFailure
from agentrft.tools.sandbox import Sandbox, SandboxConfig
from agentrft.types import Grade, TaskRow, Trajectory

__all__ = ["COST_PER_EXTRA_CALL", "GRADER_VERSION", "MAX_COST", "final_files", "grade"]

GRADER_VERSION = "coding-v1"
COST_PER_EXTRA_CALL = 0.05
MAX_COST = 0.3


def final_files(trajectory: Trajectory, task: BugTask) -> tuple[dict[str, str], list[str]]:
    """The repository after the trajectory's successful edits, and notes on edits that did not replay."""
    files = task.files()
    notes = []
    for record in trajectory.tool_calls:
        if record.error is not None or record.call.name not in EDIT_TOOLS:
            continue
        try:
            apply_edit(files, task, record.call.name, record.call.arguments)
        except (ToolFailure, KeyError, TypeError) as e:
            # It succeeded in the rollout, so the file there had changed in between (code run by run_tests).
            message = e.message if isinstance(e, ToolFailure) else f"{type(e).__name__}: {e}"
            notes.append(f"edit {record.call.id} ({record.call.name}) did not replay: {message}")
    return files, notes


def grade(trajectory: Trajectory, row: TaskRow, sandbox_config: SandboxConfig | None = None) -> Grade:
    """Score ``trajectory`` against ``row`` (sub-rewards ``tests``, ``cost``); never raises."""
    start = time.perf_counter()
    errors = no_errors()
    try:
        task = get_task(str(row["task_id"]))
    except (KeyError, AgentRFTError) as e:
        errors[SAMPLE_PARSE_ERROR] = True
        return Grade(0.0, {}, errors, [f"coding grader: {type(e).__name__}: {e}"], GRADER_VERSION,
                     time.perf_counter() - start)
    files, notes = final_files(trajectory, task)
    try:
        with Sandbox(sandbox_config or SandboxConfig(wall_time_s=10.0, cpu_time_s=5)) as sandbox:
            for name, text in files.items():
                sandbox.write_file(name, text)
            run = run_test_suite(sandbox, task)
    except (AgentRFTError, OSError) as e:  # the sandbox failed: a grader error, never a silent 0
        errors[OTHER_ERROR] = True
        return Grade(0.0, {}, errors, [*notes, f"coding grader: sandbox failed: {type(e).__name__}: {e}"],
                     GRADER_VERSION, time.perf_counter() - start)
    if not run.finished:
        notes.append(f"the tests did not finish: {run.output[-300:]}")
    target = int(row.get("target_tool_calls", TARGET_TOOL_CALLS))
    cost = min(MAX_COST, COST_PER_EXTRA_CALL * max(0, len(trajectory.tool_calls) - target))
    tests = run.fraction
    reward = max(0.0, tests - cost)
    return Grade(round(reward, 6), {"tests": tests, "cost": round(cost, 6)}, errors, notes, GRADER_VERSION,
                 time.perf_counter() - start)
