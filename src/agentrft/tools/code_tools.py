"""The ``run_python`` and ``run_shell`` tools: a rollout's :class:`~agentrft.tools.sandbox.Sandbox` as model tools.

What: :class:`PythonTool` and :class:`ShellTool` implement the
:class:`~agentrft.tools.base.Tool` protocol over one sandbox (one string
argument in, text out), and :func:`format_result` renders a
:class:`~agentrft.tools.sandbox.SandboxResult` as the text the model reads.

Why the split between outcome and failure: a timeout, a crash or a hit limit
is what the model's program did, so it comes back as text the model can act
on; only a failure of the sandbox itself (closed, scratch folder gone, bwrap
unable to start) is a :class:`~agentrft.tools.base.ToolFailure`, recorded as
infrastructure and not blamed on the policy. The blocking run happens in a
worker thread so that concurrent calls of one turn overlap.
"""

from __future__ import annotations

import asyncio
from typing import Any

from agentrft.tools.base import ToolContext, ToolFailure
from agentrft.tools.sandbox import Sandbox, SandboxConfig, SandboxError, SandboxResult
from agentrft.types import ToolErrorKind

__all__ = ["PythonTool", "ShellTool", "format_result"]


def format_result(result: SandboxResult, config: SandboxConfig | None = None) -> str:
    """The text a model sees for one run: exit code, why it was killed, stdout, stderr, truncation."""
    lines = [f"exit_code: {result.exit_code}"]
    cfg = config or SandboxConfig()
    notes = {
        "wall_time": f"killed: wall-clock limit of {cfg.wall_time_s:g} s exceeded (timed out)",
        "cpu_time": f"killed: CPU time limit of {cfg.cpu_time_s} s exceeded",
        "memory": f"out of memory: the limit is {cfg.memory_mb} MiB of address space per process",
        "output_limit": f"killed: output exceeded {cfg.max_output_bytes} bytes",
        "file_size": f"killed: a file grew beyond {cfg.max_file_size_mb} MiB",
    }
    if result.killed_reason:
        lines.append(notes.get(result.killed_reason, f"killed: {result.killed_reason}"))
    lines += ["stdout:", result.stdout.rstrip("\n"), "stderr:", result.stderr.rstrip("\n")]
    if result.truncated:
        lines.append(f"[output truncated at {cfg.max_output_bytes} bytes]")
    return "\n".join(lines)


class _SandboxTool:
    """One string argument in, :func:`format_result` text out; the blocking run happens in a worker thread."""

    name: str
    argument: str
    argument_doc: str
    description: str
    has_implementation = True

    def __init__(self, sandbox: Sandbox, name: str | None = None):
        self.sandbox = sandbox
        if name is not None:
            self.name = name

    def schema(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": {
                    "type": "object",
                    "properties": {self.argument: {"type": "string", "description": self.argument_doc}},
                    "required": [self.argument],
                    "additionalProperties": False,
                },
            },
        }

    async def acall(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        value = arguments.get(self.argument)
        if not isinstance(value, str):
            raise ToolFailure(ToolErrorKind.INVALID_ARGUMENTS, f"`{self.argument}` must be a string")
        try:
            result = await asyncio.to_thread(self._run, value)
        except SandboxError as e:  # the sandbox itself failed: not the model's fault
            raise ToolFailure(ToolErrorKind.INFRASTRUCTURE, str(e)) from e
        # Timeouts, crashes and limits are the program's outcome: text for the model, not a tool error.
        return format_result(result, self.sandbox.config)

    def _run(self, value: str) -> SandboxResult:
        raise NotImplementedError


class PythonTool(_SandboxTool):
    """``run_python(code)``: run Python source in the rollout's sandbox (cwd /work, no network)."""

    name = "run_python"
    argument = "code"
    argument_doc = "Python 3 source code to run as a script. Print what you want to see."
    description = (
        "Run Python code in an isolated sandbox (no network; files persist in the working folder /work "
        "for this task). Returns the exit code, stdout and stderr."
    )

    def _run(self, value: str) -> SandboxResult:
        return self.sandbox.run_python(value)


class ShellTool(_SandboxTool):
    """``run_shell(command)``: run a bash command line in the rollout's sandbox."""

    name = "run_shell"
    argument = "command"
    argument_doc = "A bash command line."
    description = (
        "Run a shell command in an isolated sandbox (no network; files persist in the working folder /work "
        "for this task). Returns the exit code, stdout and stderr."
    )

    def _run(self, value: str) -> SandboxResult:
        return self.sandbox.run_shell(value)
