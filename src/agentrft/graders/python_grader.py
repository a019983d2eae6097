"""The ``python`` grader: user ``grade(sample, item)`` code run in an isolated subprocess.

Each grade starts a fresh ``python -I`` process (isolated mode: no user site,
no ``PYTHON*`` variables) in an empty temporary working directory with a
minimal environment -- the parent's variables, API keys included, are not
passed on. The sample and item go in on stdin as JSON; the score comes back
on the original stdout while the user's own prints are diverted to stderr.

This module is the grader's *policy* (the argv, the environment, the limits
the runner sets on itself). Starting, streaming and reaping the process is
:func:`agentrft.tools.sandbox.process.run_process`, the same process control
that runs the model's code in the sandbox: so the grader's stdout and stderr
are read as they stream under an output cap (``max_output_bytes``), the run
ends at the wall-clock timeout or when the runner exits, and whatever it left
in its process group is killed then, so a background child can neither hold
the grade open nor outlive it.

Limits (:class:`PythonLimits`):

* CPU seconds, address space and file size are set with ``resource.setrlimit``
  by the runner itself as its first act, before the user code is read.
  **Departure from a ``preexec_fn``:** ``preexec_fn`` is documented as unsafe
  in threaded programs and :func:`agentrft.graders.batch.grade_batch` grades
  from threads; limits set in the child before any user code runs are just
  as binding and are inherited by anything the user code spawns;
* a wall-clock timeout, after which the whole process group is killed
  (the runner leads its own session; a child that calls ``setsid()`` leaves
  the group and is not killed);
* an output cap on stdout + stderr together, beyond which the process group
  is killed;
* no network: when ``unshare -rn true`` works on this machine the process runs
  in a new, empty network namespace (``unshare -rn``: no interfaces, not even
  a usable loopback). Otherwise the runner replaces ``socket.socket`` and
  friends with a function that raises before the user code is loaded -- a
  best-effort guard (code using ``ctypes`` could get around it), reported by
  :func:`network_isolation`. ``image_tag`` is accepted but the local
  interpreter (and its installed packages) runs the code.

Any exception, timeout, crash, output flood or non-number/NaN/infinite result
gives score 0 with ``python_grader_runtime_error`` and the message; a process
that could not be started at all gives ``python_grader_server_error``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from agentrft.graders.base import (
    PYTHON_GRADER_RUNTIME_ERROR,
    PYTHON_GRADER_SERVER_ERROR,
    SAMPLE_PARSE_ERROR,
    Grader,
    GradingFailure,
)
from agentrft.graders.spec import PythonSpec
from agentrft.tools.sandbox.process import Containment, Launch, RunLimits, run_process

Isolation = Literal["auto", "namespace", "socket_patch"]


@dataclass(frozen=True)
class PythonLimits:
    """Resource limits for one python-grader run."""

    timeout_s: float = 30.0  # wall clock; the process group is killed after it
    cpu_s: int = 20  # RLIMIT_CPU
    memory_mb: int = 1024  # RLIMIT_AS (address space)
    file_size_mb: int = 16  # RLIMIT_FSIZE
    isolation: Isolation = "auto"  # network isolation; auto = namespace when available
    max_output_bytes: int = 4 * 2**20  # stdout + stderr kept; more kills the process group


@lru_cache(maxsize=1)
def namespace_available() -> bool:
    """Whether ``unshare -rn`` can create a network namespace here."""
    exe = shutil.which("unshare")
    if not exe:
        return False
    try:
        return subprocess.run([exe, "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def network_isolation(requested: Isolation = "auto") -> Literal["namespace", "socket_patch"]:
    """The network isolation a run will get."""
    if requested == "auto":
        return "namespace" if namespace_available() else "socket_patch"
    return requested


# The child program. It runs with -I, limits itself, then loads the user code.
_RUNNER = r"""
import json, os, resource, sys, traceback
cfg = json.loads(sys.stdin.buffer.read())
# CPU: SIGXCPU at the soft limit, SIGKILL one second later at the hard one
for name, soft, hard in (("RLIMIT_CPU", cfg["cpu_s"], cfg["cpu_s"] + 1), ("RLIMIT_AS", cfg["memory_bytes"], cfg["memory_bytes"]),
                         ("RLIMIT_FSIZE", cfg["file_bytes"], cfg["file_bytes"]), ("RLIMIT_CORE", 0, 0)):
    resource.setrlimit(getattr(resource, name), (soft, hard))
result_fd = os.dup(1)
os.dup2(2, 1)  # the user's prints go to stderr; stdout carries only the result
if cfg["block_sockets"]:
    import socket, _socket
    def _no_network(*args, **kwargs):
        raise OSError("network access is disabled in python graders")
    for mod in (socket, _socket):
        for attr in ("socket", "socketpair", "create_connection", "create_server", "fromfd"):
            if hasattr(mod, attr):
                setattr(mod, attr, _no_network)
try:
    namespace = {"__name__": "grader"}
    exec(compile(cfg["source"], "<grader>", "exec"), namespace)
    value = namespace["grade"](cfg["sample"], cfg["item"])
    if isinstance(value, (bool, int, float)):
        out = {"status": "ok", "value": float(value)}
    else:
        out = {"status": "invalid", "detail": type(value).__name__ + ": " + repr(value)[:200]}
except BaseException as e:
    out = {"status": "error", "detail": "".join(traceback.format_exception(e))[-4000:]}
os.write(result_fd, json.dumps(out).encode())
"""


def run_python_grader(source: str, sample: dict[str, Any], item: dict[str, Any], limits: PythonLimits) -> float:
    """Run ``grade(sample, item)`` from ``source`` in a sandboxed process; raise :class:`GradingFailure` on any failure."""
    isolation = network_isolation(limits.isolation)
    try:
        payload = json.dumps(
            {
                "source": source,
                "sample": sample,
                "item": item,
                "cpu_s": int(limits.cpu_s),
                "memory_bytes": int(limits.memory_mb) * 2**20,
                "file_bytes": int(limits.file_size_mb) * 2**20,
                "block_sockets": isolation == "socket_patch",
            }
        ).encode()
    except (TypeError, ValueError) as e:
        raise GradingFailure(SAMPLE_PARSE_ERROR, f"sample/item are not JSON-serialisable: {e}") from None

    workdir = tempfile.mkdtemp(prefix="agentrft-pygrader-")
    try:
        try:
            result = run_process(
                _grader_argv(isolation),
                _LAUNCH,
                RunLimits(wall_time_s=limits.timeout_s, max_output_bytes=limits.max_output_bytes),
                stdin=payload,
                cwd=workdir,
                env={"PATH": os.defpath, "HOME": workdir, "LANG": "C.UTF-8", "TMPDIR": workdir},
            )
        except OSError as e:
            raise GradingFailure(PYTHON_GRADER_SERVER_ERROR, f"could not start the python grader process: {e}") from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if result.killed_reason == "wall_time":
        raise GradingFailure(
            PYTHON_GRADER_RUNTIME_ERROR, f"python grader timed out after {limits.timeout_s}s (process group killed)"
        )
    if result.killed_reason == "output_limit":
        raise GradingFailure(
            PYTHON_GRADER_RUNTIME_ERROR,
            f"python grader wrote more than {limits.max_output_bytes} bytes of output (process group killed)",
        )
    return _read_result(result.returncode, result.stdout, result.stderr)


# The grader runs as our own user in its own process group (the runner leads a new session).
_LAUNCH = Launch(containment=Containment.PROCESS_GROUP)


def _grader_argv(isolation: Literal["namespace", "socket_patch"]) -> list[str]:
    """The runner's command line: ``python -I`` with the runner program, in a new network namespace when asked."""
    argv = [sys.executable, "-I", "-c", _RUNNER]
    if isolation == "namespace":
        argv = [shutil.which("unshare") or "unshare", "-rn", *argv]
    return argv


def _read_result(returncode: int, out: bytes, err: bytes) -> float:
    stderr = err.decode("utf-8", "replace")[-2000:]
    try:
        result = json.loads(out.decode("utf-8")) if out else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        result = None
    if result is None:
        if stderr.lstrip().startswith("unshare:"):
            raise GradingFailure(PYTHON_GRADER_SERVER_ERROR, f"network sandbox failed: {stderr.strip()}")
        if returncode < 0:
            sig = signal.Signals(-returncode).name
            why = {"SIGXCPU": " (CPU time limit)", "SIGKILL": " (killed, e.g. CPU or memory limit)"}.get(sig, "")
            raise GradingFailure(PYTHON_GRADER_RUNTIME_ERROR, f"python grader killed by {sig}{why}. {stderr}".strip())
        raise GradingFailure(PYTHON_GRADER_RUNTIME_ERROR, f"python grader exited {returncode} without a result. {stderr}")
    if result["status"] == "error":
        raise GradingFailure(PYTHON_GRADER_RUNTIME_ERROR, f"grade() raised: {result['detail']}")
    if result["status"] == "invalid":
        raise GradingFailure(PYTHON_GRADER_RUNTIME_ERROR, f"grade() must return a number, got {result['detail']}")
    return result["value"]


class PythonGrader(Grader):
    spec: PythonSpec
    reward_range = None  # OpenAI lets python graders return any float; it must be finite
    invalid_score_flag = PYTHON_GRADER_RUNTIME_ERROR  # NaN / infinity from grade() is the user's runtime error

    def __init__(self, spec: PythonSpec, limits: PythonLimits | None = None):
        super().__init__(spec)
        self.limits = limits or PythonLimits()

    def score(self, sample: dict[str, Any], item: dict[str, Any]) -> float:
        return run_python_grader(self.spec.source, sample, item, self.limits)
