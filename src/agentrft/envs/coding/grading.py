"""The coding env's grader: rebuild the agent's repository from its edits and check what its code returns.

What: :func:`grade` scores one trajectory against its task row::

    reward = max(0, tests - cost)
    tests  = passed / total, checked by the grader on the rebuilt repository
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
repository rebuilds the agent's final code. Files the agent's *code* wrote
while ``run_tests`` ran are not replayed: only deliberate edits count.

Why the verdict is taken outside the sandbox (:func:`check_solution`): code
under test that runs in the same process as a test runner can make that
runner say anything -- print its summary line and exit, rewrite its output at
exit, patch the functions it reports with, or return an object that compares
equal to every expected value. No result a process running the agent's code
writes can be trusted, so none is: a fresh sandbox holds only the rebuilt
repository (no tests, no runner, none of the expected values), a small
checker imports the module and calls the function with each test's arguments,
and reports each return value's ``repr`` (or the exception's type). The host
parses each ``repr`` as a Python literal and compares it with the value the
fixed function returns, with the tests' own comparison (``==``, or a 1e-9
tolerance for floats). Each test of ``test_<module>.py`` is exactly one such
call, so the same tests pass as under ``run_tests.py``; what a forged report
can claim is only return values, and claiming the right ones is solving the
task (or a lookup table of the expected values, which the tests show: the
known limit, see docs/env-coding.md).
"""

from __future__ import annotations

import ast
import json
import time
from typing import Any

from agentrft.envs.coding.env import EDIT_TOOLS, TestRun, apply_edit, run_notes
from agentrft.envs.coding.tasks import TARGET_TOOL_CALLS, BugTask, get_task
from agentrft.errors import AgentRFTError
from agentrft.graders.base import OTHER_ERROR, SAMPLE_PARSE_ERROR, no_errors
from agentrft.tools.base import ToolFailure
from agentrft.tools.sandbox import Sandbox, SandboxConfig, SandboxResult
from agentrft.types import Grade, TaskRow, Trajectory

__all__ = ["COST_PER_EXTRA_CALL", "GRADER_VERSION", "MAX_COST", "check_solution", "final_files", "grade"]

GRADER_VERSION = "coding-v2"
COST_PER_EXTRA_CALL = 0.05
MAX_COST = 0.3
_MAX_REPR_CHARS = 10_000  # a returned value longer than this cannot equal any expected value
_TAIL_CHARS = 300

# The checker, run as ``python -I -c _CHECKER <module> <function> <calls>`` in the sandbox's /work. Isolated
# mode keeps PYTHON* variables, the user site and /work out of start-up (no sitecustomize or .pth from the
# repository); /work is appended after the standard library, as run_tests.py does. ``calls`` is a JSON list
# of the argument tuples' reprs, parsed afresh for each call, so a call that mutates its arguments cannot
# affect the next. The module's own prints go to stderr; the one report line goes to the original stdout.
# Nothing here is trusted by the host beyond the values it reports.
_CHECKER = r"""
import ast, json, os, signal, sys
SECONDS = 2
MAX_REPR = __MAX_REPR__
MODULE, FUNCTION, CALLS = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
report = os.dup(1)
os.dup2(2, 1)
sys.dont_write_bytecode = True
sys.path.append(os.getcwd())


def on_alarm(signum, frame):
    raise TimeoutError("took longer than %d s" % SECONDS)


signal.signal(signal.SIGALRM, on_alarm)
outcomes = []
signal.alarm(SECONDS)
try:
    function = getattr(__import__(MODULE), FUNCTION)
    signal.alarm(0)
except BaseException as exc:
    signal.alarm(0)
    outcomes = [["error", "cannot import %s: %s" % (MODULE, type(exc).__name__)]] * len(CALLS)
else:
    for args in CALLS:
        signal.alarm(SECONDS)
        try:
            value = repr(function(*ast.literal_eval(args)))
            signal.alarm(0)
            outcomes.append(["value", value[:MAX_REPR]])
        except BaseException as exc:
            signal.alarm(0)
            outcomes.append(["error", type(exc).__name__])
os.write(report, (json.dumps(outcomes) + "\n").encode())
""".replace("__MAX_REPR__", str(_MAX_REPR_CHARS + 1))


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


def check_solution(files: dict[str, str], task: BugTask, sandbox_config: SandboxConfig | None = None) -> TestRun:
    """Run the task's test calls on ``files`` in a fresh sandbox and judge the returned values here.

    The sandbox gets every file but the tests and the runner. ``finished`` is
    False (and nothing passes) unless the checker's single report line came
    back well formed; ``output`` has one ``PASS``/``FAIL`` line per test.
    Raises what :class:`~agentrft.tools.sandbox.Sandbox` raises when the sandbox itself fails.
    """
    calls = json.dumps([repr(args) for args in task.calls])
    with Sandbox(sandbox_config or SandboxConfig(wall_time_s=10.0, cpu_time_s=5)) as sandbox:
        for name, text in files.items():
            if name not in task.protected_files():
                sandbox.write_file(name, text)
        result = sandbox.run([sandbox.config.python, "-I", "-c", _CHECKER, task.module[:-3], task.function, calls])
    outcomes = _parse_report(result.stdout, task.num_tests)
    if outcomes is None:
        return TestRun(passed=0, total=task.num_tests, output=_unfinished(result), finished=False)
    lines, passed = [], 0
    for k, ((kind, text), expected) in enumerate(zip(outcomes, task.expected_values()), start=1):
        name = f"test_{task.function}_{k}"
        if kind == "value" and _matches(text, expected):
            passed += 1
            lines.append(f"PASS {name}")
        elif kind == "value":
            lines.append(f"FAIL {name}: returned {text[:200]}, expected {expected!r}")
        else:
            lines.append(f"FAIL {name}: {text[:200]}")
    return TestRun(passed=passed, total=task.num_tests, output="\n".join(lines), finished=True)


def _parse_report(stdout: str, num_tests: int) -> list[tuple[str, str]] | None:
    """The checker's outcomes, or None unless stdout is exactly one well-formed report line."""
    lines = stdout.splitlines()
    if len(lines) != 1:
        return None
    try:
        report = json.loads(lines[0])
    except ValueError:
        return None
    if not isinstance(report, list) or len(report) != num_tests:
        return None
    outcomes = []
    for entry in report:
        if (not isinstance(entry, list) or len(entry) != 2 or entry[0] not in ("value", "error")
                or not isinstance(entry[1], str)):
            return None
        outcomes.append((entry[0], entry[1]))
    return outcomes


def _matches(text: str, expected: Any) -> bool:
    """Whether a returned value's ``repr`` passes the test's assertion against ``expected``."""
    if len(text) > _MAX_REPR_CHARS:
        return False
    try:
        value = ast.literal_eval(text)  # plain data only: the comparison below runs no code of the agent's
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    try:
        if isinstance(expected, float):
            return bool(abs(value - expected) < 1e-9)
        return bool(value == expected)
    except (TypeError, ValueError, OverflowError):
        return False


def _unfinished(result: SandboxResult) -> str:
    notes = run_notes(result, _TAIL_CHARS)
    notes.append("no valid report from the checker: 0 tests counted as passed")
    return "\n".join(notes)


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
        run = check_solution(files, task, sandbox_config)
    except (AgentRFTError, OSError) as e:  # the sandbox failed: a grader error, never a silent 0
        errors[OTHER_ERROR] = True
        return Grade(0.0, {}, errors, [*notes, f"coding grader: sandbox failed: {type(e).__name__}: {e}"],
                     GRADER_VERSION, time.perf_counter() - start)
    if not run.finished:
        notes.append(f"the tests did not finish: {run.output[-_TAIL_CHARS:]}")
    target = int(row.get("target_tool_calls", TARGET_TOOL_CALLS))
    cost = min(MAX_COST, COST_PER_EXTRA_CALL * max(0, len(trajectory.tool_calls) - target))
    tests = run.fraction
    reward = max(0.0, tests - cost)
    return Grade(round(reward, 6), {"tests": tests, "cost": round(cost, 6)}, errors, notes, GRADER_VERSION,
                 time.perf_counter() - start)
