"""Sandboxed execution of model-written code.

What: a :class:`Sandbox` owns one private scratch folder (one per rollout) and
runs commands or Python source in it under `bubblewrap`_ (``bwrap``), returning
a :class:`SandboxResult` (exit code, capped stdout/stderr, why it was killed,
wall time). The ``run_python`` / ``run_shell`` tools that expose it to the
model live in :mod:`agentrft.tools.code_tools` and are re-exported here.

Why bubblewrap: the code is written by a policy under optimisation pressure, so
it must be treated as hostile (reward hacking reads grader files, fork bombs,
network calls). bwrap gives namespace isolation without a daemon, root or
container images, starts in a few milliseconds, and is packaged everywhere
(``apt-get install bubblewrap``).

The package, one concern per module:

* :mod:`.core` -- errors, :class:`SandboxConfig`, :class:`SandboxResult`, shared constants;
* :mod:`.policy` -- the isolation policy: bwrap discovery and self-check, the
  bwrap and ``prlimit`` command lines, the environment, the identity;
* :mod:`.process` -- process control shared with the python grader: spawn,
  stream under an output cap and a wall deadline, and reap so that no process
  outlives a run (a pid namespace's init held by a pidfd, or a process group);
* :mod:`.files` -- host-side access to the scratch folder that never follows
  links the code planted;
* :mod:`.sandbox` -- the :class:`Sandbox` that composes them.

Departures from a container runtime: no seccomp filter, no cgroup (memory is
bounded per process by ``RLIMIT_AS``, not in total; disk use of the scratch
folder is bounded per file only). See ``docs/sandbox.md`` for the threat model.

.. _bubblewrap: https://github.com/containers/bubblewrap
"""

from __future__ import annotations

import importlib
from typing import Any

from agentrft.tools.sandbox.core import (  # the layout constants too: callers name /work and uid 65534
    SANDBOX_HOME,
    SANDBOX_UID,
    SandboxConfig,
    SandboxError,
    SandboxResult,
    SandboxUnavailableError,
    UnsafePathError,
)
from agentrft.tools.sandbox.policy import bwrap_available
from agentrft.tools.sandbox.sandbox import Sandbox

__all__ = [
    "PythonTool",
    "Sandbox",
    "SandboxConfig",
    "SandboxError",
    "SandboxResult",
    "SandboxUnavailableError",
    "ShellTool",
    "UnsafePathError",
    "bwrap_available",
    "format_result",
]

# The code tools import this package; loading them on first use (PEP 562) keeps that one-way.
_CODE_TOOLS = ("PythonTool", "ShellTool", "format_result")


def __getattr__(name: str) -> Any:
    if name in _CODE_TOOLS:
        return getattr(importlib.import_module("agentrft.tools.code_tools"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
