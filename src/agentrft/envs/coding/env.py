"""CodingEnv: one bug-fix task in a private sandbox, with file and test tools.

What: :meth:`CodingEnv.setup` makes a :class:`~agentrft.tools.sandbox.Sandbox`
for the rollout and writes the task's repository into its scratch folder (with
:meth:`Sandbox.write_file`, which never follows links); its public methods are
the agent's tools: ``list_files``, ``read_file``, ``write_file``,
``replace_in_file`` (an exact, unique search-and-replace: the edit a small
model can make without retyping the file) and ``run_tests``, which runs the
repository's ``run_tests.py`` inside the sandbox. :meth:`CodingEnv.close`
removes the sandbox and its folder.

Why a sandbox: ``run_tests`` executes code the policy wrote. Inside bubblewrap
it sees only its own folder (at ``/work``), no network and no host files, under
CPU, memory and wall-clock limits (docs/sandbox.md).

What is refused, as ``ToolFailure(GUARDRAIL)`` so it is counted like any
guardrail: a path outside the repository (``..``, an absolute path other than
``/work/...``, a symlink the code planted), and any change to the tests or the
runner -- fixing the tests instead of the code is the reward hack this
environment is about. ``run_tests`` also puts pristine copies of the tests and
the runner back before each run, so code that rewrote them at run time does not
fool the agent either. Its output is for the agent only: code under test runs in
the runner's process and could make it print anything, so the grader
(:mod:`.grading`) never reads it and takes its verdict outside the sandbox.

The edit rules live in pure functions (:func:`repo_path`, :func:`replace_once`,
:func:`apply_edit`) shared by the tools and the grader's replay, so the file
the grader rebuilds is the file the agent made.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from dataclasses import dataclass
from typing import Any

from agentrft.envs.coding.tasks import RUNNER_FILE, BugTask, get_task
from agentrft.tools.base import ToolFailure
from agentrft.tools.environment import Environment
from agentrft.tools.sandbox import SANDBOX_HOME, Sandbox, SandboxConfig, SandboxError, SandboxResult, UnsafePathError
from agentrft.types import TaskRow, ToolErrorKind

__all__ = [
    "EDIT_TOOLS",
    "MAX_FILE_CHARS",
    "CodingEnv",
    "TestRun",
    "apply_edit",
    "repo_path",
    "replace_once",
    "run_test_suite",
]

MAX_FILE_CHARS = 100_000
"""Largest file ``write_file`` / ``replace_in_file`` may produce."""
EDIT_TOOLS = ("write_file", "replace_in_file")
"""The tools that change files: what the grader replays."""
_OUTPUT_TAIL_CHARS = 2000


# -- edit rules, shared with the grader -----------------------------------------------------------
def repo_path(path: str) -> str:
    """``path`` as a clean repository-relative path, or ``ToolFailure(GUARDRAIL)`` when it leaves the repo."""
    if not isinstance(path, str) or not path.strip() or "\x00" in path:
        raise ToolFailure(ToolErrorKind.GUARDRAIL, f"invalid path {path!r}")
    text = path.strip()
    if text.startswith("/"):  # the in-sandbox spelling /work/x is accepted, nothing else absolute
        if text != SANDBOX_HOME and not text.startswith(SANDBOX_HOME + "/"):
            raise ToolFailure(ToolErrorKind.GUARDRAIL, f"{path!r} is outside the repository; use a relative path")
        text = text[len(SANDBOX_HOME):]
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ToolFailure(ToolErrorKind.GUARDRAIL, f"{path!r} is outside the repository; use a relative path")
    return "/".join(parts)


def _check_writable(task: BugTask, relpath: str) -> None:
    if relpath in task.protected_files():
        raise ToolFailure(
            ToolErrorKind.GUARDRAIL,
            f"{relpath} is read-only: fix the code in {task.module}, not the tests or the runner",
        )


def _check_size(content: str) -> None:
    if len(content) > MAX_FILE_CHARS:
        raise ToolFailure(ToolErrorKind.TOOL_ERROR, f"the file would be {len(content)} characters; at most {MAX_FILE_CHARS}")


def replace_once(text: str, old: str, new: str, path: str) -> str:
    """``text`` with the single occurrence of ``old`` replaced by ``new``; ``TOOL_ERROR`` unless exactly one."""
    if not old:
        raise ToolFailure(ToolErrorKind.TOOL_ERROR, "`old` is empty; give the exact text to replace")
    count = text.count(old)
    if count != 1:
        hint = "copy it exactly from read_file, including indentation" if count == 0 else "include more context"
        raise ToolFailure(ToolErrorKind.TOOL_ERROR, f"`old` occurs {count} times in {path}, not once; {hint}")
    result = text.replace(old, new, 1)
    _check_size(result)
    return result


def apply_edit(files: dict[str, str], task: BugTask, name: str, arguments: dict[str, Any]) -> None:
    """Apply one ``write_file`` / ``replace_in_file`` call to ``files`` (``{path: text}``) as the tool did."""
    relpath = repo_path(arguments["path"])
    _check_writable(task, relpath)
    if name == "write_file":
        _check_size(arguments["content"])
        files[relpath] = arguments["content"]
    elif name == "replace_in_file":
        if relpath not in files:
            raise ToolFailure(ToolErrorKind.TOOL_ERROR, f"no file {relpath}")
        files[relpath] = replace_once(files[relpath], arguments["old"], arguments["new"], relpath)
    else:
        raise ValueError(f"{name!r} is not an edit tool")


# -- running the tests --------------------------------------------------------------------------------
@dataclass
class TestRun:
    """One run of ``run_tests.py``: the counts (``passed`` 0 when no summary came back) and its output."""

    __test__ = False  # not a pytest class

    passed: int
    total: int
    output: str
    finished: bool  # the runner printed its summary line

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0


def run_test_suite(sandbox: Sandbox, task: BugTask) -> TestRun:
    """Put pristine tests and runner into ``sandbox`` and run them; the counts use the task's own test count.

    ``-I`` (isolated mode) keeps ``PYTHON*`` variables and the repository out
    of the interpreter's start-up; the runner appends the repository after the
    standard library, so a file such as ``json.py`` cannot shadow a module.
    """
    files = task.files()
    for name in task.protected_files():
        sandbox.write_file(name, files[name])
    result = sandbox.run([sandbox.config.python, "-I", RUNNER_FILE])
    passed, finished = 0, False
    lines = result.stdout.strip().splitlines()
    if lines:
        try:
            summary = json.loads(lines[-1])
            passed = min(max(int(summary["passed"]), 0), task.num_tests)
            finished = True
        except (ValueError, TypeError, KeyError):
            finished = False  # no valid summary line (e.g. the code under test exited early): reported below
    output = result.stdout.rstrip("\n")
    if not finished or result.exit_code != 0 or result.killed_reason:
        notes = run_notes(result, _OUTPUT_TAIL_CHARS, stderr_label="stderr:\n")
        output = "\n".join([output, *notes]).strip("\n")
    if not finished:
        output += f"\nthe test run did not finish: 0 of {task.num_tests} tests counted as passed"
    return TestRun(passed=passed, total=task.num_tests, output=output, finished=finished)


# -- the environment ----------------------------------------------------------------------------------
class CodingEnv(Environment):
    """A repository with a failing test suite in a per-rollout sandbox; fix the code until the tests pass."""

    def __init__(self, sandbox_config: SandboxConfig | None = None) -> None:
        self._config = sandbox_config or SandboxConfig(wall_time_s=10.0, cpu_time_s=5, max_output_bytes=32_000)
        self._lock = threading.Lock()  # the calls of one turn run in parallel threads
        self.sandbox: Sandbox | None = None
        self.task: BugTask | None = None
        self.last_test_run: TestRun | None = None
        """The latest ``run_tests`` result (the grader re-runs the tests itself)."""

    # -- lifecycle --------------------------------------------------------------------------
    def setup(self, row: TaskRow) -> None:
        self.task = get_task(str(row["task_id"]))
        self.sandbox = Sandbox(self._config)
        try:
            for name, text in self.task.files().items():
                self.sandbox.write_file(name, text)
        except BaseException:
            self.sandbox.close()
            raise

    def close(self) -> None:
        with self._lock:
            if self.sandbox is not None:
                self.sandbox.close()

    # -- tools ------------------------------------------------------------------------------
    def list_files(self) -> str:
        """List the files of the repository (path and size), one per line."""
        sandbox, _ = self._ready()
        with self._lock:
            root = sandbox.scratch_dir
            entries = []
            for folder, dirs, files in os.walk(root, followlinks=False):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__")
                for name in sorted(files):
                    full = os.path.join(folder, name)
                    st = os.lstat(full)
                    if stat.S_ISREG(st.st_mode):
                        entries.append(f"{os.path.relpath(full, root)} ({st.st_size} bytes)")
            return "\n".join(entries) or "(no files)"

    def read_file(self, path: str) -> str:
        """Return the text of a file in the repository.

        Args:
            path: the file's path relative to the repository root, e.g. "utils.py".
        """
        sandbox, _ = self._ready()
        relpath = repo_path(path)
        with self._lock:
            return self._read(sandbox, relpath)

    def write_file(self, path: str, content: str) -> str:
        """Create or overwrite a file in the repository with the given content.

        Args:
            path: the file's path relative to the repository root.
            content: the complete new text of the file.
        """
        sandbox, task = self._ready()
        relpath = repo_path(path)
        _check_writable(task, relpath)
        _check_size(content)
        with self._lock:
            self._write(sandbox, relpath, content)
        return f"wrote {relpath} ({len(content.splitlines())} lines)"

    def replace_in_file(self, path: str, old: str, new: str) -> str:
        """Replace one exact piece of text in a file (it must occur exactly once).

        Args:
            path: the file's path relative to the repository root.
            old: the exact text to replace, including indentation; it must occur exactly once in the file.
            new: the text to put in its place.
        """
        sandbox, task = self._ready()
        relpath = repo_path(path)
        _check_writable(task, relpath)
        with self._lock:
            text = self._read(sandbox, relpath)
            updated = replace_once(text, old, new, relpath)
            self._write(sandbox, relpath, updated)
        line = text[: text.index(old)].count("\n") + 1
        return f"replaced {len(old.splitlines()) or 1} line(s) at line {line} of {relpath}"

    def run_tests(self) -> str:
        """Run the repository's tests; returns PASS/FAIL per test and a summary line {"passed": n, "total": m}."""
        sandbox, task = self._ready()
        with self._lock:
            try:
                run = run_test_suite(sandbox, task)
            except SandboxError as e:  # the sandbox itself failed: not the model's fault
                raise ToolFailure(ToolErrorKind.INFRASTRUCTURE, str(e)) from e
        self.last_test_run = run
        return run.output

    # -- helpers ------------------------------------------------------------------------------
    def _ready(self) -> tuple[Sandbox, BugTask]:
        if self.sandbox is None or self.task is None or self.sandbox.closed:
            raise ToolFailure(ToolErrorKind.INFRASTRUCTURE, "the environment is not set up or already closed")
        return self.sandbox, self.task

    @staticmethod
    def _read(sandbox: Sandbox, relpath: str) -> str:
        full = os.path.join(sandbox.scratch_dir, relpath)
        if os.path.isdir(full) and not os.path.islink(full):
            raise ToolFailure(ToolErrorKind.TOOL_ERROR, f"{relpath} is a folder; use list_files")
        try:
            data = sandbox.read_file(relpath, max_bytes=MAX_FILE_CHARS * 4)
        except UnsafePathError as e:
            raise ToolFailure(ToolErrorKind.GUARDRAIL, f"{relpath!r} cannot be read: {e}") from e
        except FileNotFoundError:
            raise ToolFailure(ToolErrorKind.TOOL_ERROR, f"no file {relpath}; use list_files to see the files") from None
        except (IsADirectoryError, SandboxError) as e:
            raise ToolFailure(ToolErrorKind.TOOL_ERROR, f"cannot read {relpath}: {e}") from e
        return data.decode("utf-8", errors="replace")

    @staticmethod
    def _write(sandbox: Sandbox, relpath: str, content: str) -> None:
        try:
            sandbox.write_file(relpath, content)
        except UnsafePathError as e:
            raise ToolFailure(ToolErrorKind.GUARDRAIL, f"{relpath!r} cannot be written: {e}") from e
        except OSError as e:
            raise ToolFailure(ToolErrorKind.TOOL_ERROR, f"cannot write {relpath}: {e.strerror or e}") from e


def run_notes(result: SandboxResult, tail_chars: int, stderr_label: str = "stderr: ") -> list[str]:
    """How a sandboxed run ended, as lines for the model or the grade: exit code, why it was killed, the
    end of its stderr."""
    notes = [f"exit_code: {result.exit_code}"]
    if result.killed_reason:
        notes.append(f"killed: {result.killed_reason}")
    stderr = result.stderr.strip()
    if stderr:
        notes.append(stderr_label + stderr[-tail_chars:])
    return notes
