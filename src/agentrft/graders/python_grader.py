"""The ``python`` grader: user ``grade(sample, item)`` code run in a contained subprocess.

Each grade starts a fresh ``python -I`` process (isolated mode: no user site,
no ``PYTHON*`` variables) in an empty temporary working directory with a
minimal environment -- the parent's variables, API keys included, are not
passed on. The sample, the item and a per-run nonce go in on stdin as JSON.

This module is the grader's *policy* (the argv, the environment, the limits,
the in-process supervisor). Starting, streaming and reaping the process is
:func:`agentrft.tools.sandbox.process.run_process`, the same process control
that runs the model's code in the sandbox: stdout and stderr are read as they
stream under an output cap (``max_output_bytes``), and the run ends when the
program exits or at the wall-clock backstop.

Two processes (the runner program, :data:`_RUNNER`):

* the **supervisor** reads stdin to the end, forks the **worker**, and never
  runs user code. It waits for the worker under the wall-clock timeout, takes
  the worker's result from a private pipe, checks it (exactly one message,
  well formed, carrying the nonce, then a clean exit), kills whatever the
  worker left running, and writes the one report line on stdout;
* the **worker** sets the rlimits on itself, points its stdout at stderr (so
  the user's prints and the host's result channel never mix: it holds no
  descriptor of the host's stdout pipe), loads the user code, calls
  ``grade`` and writes one message to the pipe.

**Departure from a ``preexec_fn``:** ``preexec_fn`` is documented as unsafe in
threaded programs and :func:`agentrft.graders.batch.grade_batch` grades from
threads; limits the worker sets on itself before any user code runs are just as
binding and are inherited by anything the user code spawns.

Containment (:func:`process_containment`): where ``unshare --pid --fork
--kill-child --mount-proc`` works, the supervisor is pid 1 of a new pid
namespace (``pid_namespace``); when it exits, or the host kills it, the
kernel kills every process in the namespace, ``setsid`` daemons included, and
``unshare`` exits only once they are gone. Elsewhere (``subreaper``, best
effort) the supervisor is a child subreaper (``PR_SET_CHILD_SUBREAPER``):
orphans of the run are reparented to it, and before it reports it SIGKILLs
its children until none is left; the host also kills the process group. There
a worker can escape by killing the supervisor (same uid), and what the host
kills at its backstop or output cap is only the process group.

Network (:func:`network_isolation`): in a new, empty network namespace
(``unshare -rn``: no interfaces, not even a usable loopback) when that works;
otherwise the worker replaces ``socket.socket`` and friends with a function
that raises before the user code is loaded -- a best-effort guard (code using
``ctypes`` could get around it). ``image_tag`` is accepted but the local
interpreter (and its installed packages) runs the code.

What a result is worth (docs/graders.md): the user's ``grade`` code *is* the
grader, so it can always choose its own value; what holds is that the value
is validated (a finite number: :class:`PythonGrader` declares no range) and
that a run reports through one protocol only. A stray write to the worker's
pipe (a bare number, garbage, a second message, a message without the nonce)
or to the host's channel makes the grade a ``python_grader_runtime_error``,
never a parse of the last number. The nonce lives in the worker's memory, so
user code that digs it out can write a well-formed message -- with a value it
could have returned, which is validated the same way.

Any exception, timeout, crash, output flood, protocol break or
non-number/NaN/infinite result gives score 0 with
``python_grader_runtime_error`` and the message; a process that could not be
started at all gives ``python_grader_server_error``.
"""

from __future__ import annotations

import json
import os
import secrets
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
ProcessContainment = Literal["auto", "pid_namespace", "subreaper"]

BACKSTOP_GRACE_S = 2.0
"""The host kills the run this long after ``timeout_s``, should the supervisor not have ended it itself."""
_PID_NAMESPACE_FLAGS = ["--pid", "--fork", "--kill-child", "--mount-proc"]


@dataclass(frozen=True)
class PythonLimits:
    """Resource limits for one python-grader run."""

    timeout_s: float = 30.0  # wall clock; then every process of the run is killed
    cpu_s: int = 20  # RLIMIT_CPU
    memory_mb: int = 1024  # RLIMIT_AS (address space)
    file_size_mb: int = 16  # RLIMIT_FSIZE
    isolation: Isolation = "auto"  # network isolation; auto = namespace when available
    max_output_bytes: int = 4 * 2**20  # stdout + stderr kept; more kills the run
    containment: ProcessContainment = "auto"  # how leftovers are killed; auto = pid_namespace when available


def _unshare_works(*flags: str) -> bool:
    exe = shutil.which("unshare")
    if not exe:
        return False
    try:
        return subprocess.run([exe, *flags, "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@lru_cache(maxsize=1)
def namespace_available() -> bool:
    """Whether ``unshare -rn`` can create a network namespace here."""
    return _unshare_works("-rn")


@lru_cache(maxsize=1)
def pid_namespace_available() -> bool:
    """Whether ``unshare -r --pid --fork --kill-child --mount-proc`` can create a pid namespace here."""
    return _unshare_works("-r", *_PID_NAMESPACE_FLAGS)


def network_isolation(requested: Isolation = "auto") -> Literal["namespace", "socket_patch"]:
    """The network isolation a run will get."""
    if requested == "auto":
        return "namespace" if namespace_available() else "socket_patch"
    return requested


def process_containment(requested: ProcessContainment = "auto") -> Literal["pid_namespace", "subreaper"]:
    """How a run's leftover processes are killed: its own pid namespace, or the best-effort subreaper."""
    if requested == "auto":
        return "pid_namespace" if pid_namespace_available() else "subreaper"
    return requested


# The program: the supervisor (this process, which never runs user code) and the worker it forks.
_RUNNER = r"""
import json, os, resource, select, signal, sys, time, traceback
cfg = json.loads(sys.stdin.buffer.read())
NONCE = cfg["nonce"]
MAX_MESSAGE = 1 << 20


def worker(channel):
    # CPU: SIGXCPU at the soft limit, SIGKILL one second later at the hard one
    for name, soft, hard in (("RLIMIT_CPU", cfg["cpu_s"], cfg["cpu_s"] + 1),
                             ("RLIMIT_AS", cfg["memory_bytes"], cfg["memory_bytes"]),
                             ("RLIMIT_FSIZE", cfg["file_bytes"], cfg["file_bytes"]), ("RLIMIT_CORE", 0, 0)):
        resource.setrlimit(getattr(resource, name), (soft, hard))
    os.dup2(2, 1)  # the user's prints go to stderr; this process holds nothing of the host's stdout
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
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
    out["nonce"] = NONCE
    os.write(channel, (json.dumps(out) + "\n").encode())
    for stream in (sys.stdout, sys.stderr):
        stream.flush()


def children():
    me, found = str(os.getpid()).encode(), []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name, "rb") as f:
                    if f.read().rsplit(b")", 1)[1].split()[1] == me:
                        found.append(int(name))
            except (OSError, IndexError):
                pass
    return found


def kill_descendants():
    # As a subreaper, the orphans of every child killed here are reparented to this process before
    # waitpid returns: repeat until no child is left.
    while True:
        kids = children()
        if not kids:
            return
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in kids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def check(data):
    # The worker's pipe must hold exactly one message line, from this run, of a known shape.
    if not data:
        return {"status": "exited", "code": 0}
    if data.count(b"\n") != 1 or not data.endswith(b"\n"):
        return {"status": "protocol", "detail": "%d line(s) of %d bytes on the result channel, not one message"
                % (data.count(b"\n") + (not data.endswith(b"\n")), len(data))}
    try:
        message = json.loads(data)
    except ValueError:
        return {"status": "protocol", "detail": "the result channel held something other than a message"}
    if not isinstance(message, dict) or message.get("nonce") != NONCE:
        return {"status": "protocol", "detail": "the message on the result channel is not this run's"}
    status = message.get("status")
    if status == "ok" and type(message.get("value")) in (int, float) and set(message) == {"status", "value", "nonce"}:
        return {"status": "ok", "value": message["value"]}
    if status in ("invalid", "error") and isinstance(message.get("detail"), str) and len(message) == 3:
        return {"status": status, "detail": message["detail"]}
    return {"status": "protocol", "detail": "malformed message on the result channel"}


if cfg["subreaper"]:
    import ctypes
    if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
read_end, write_end = os.pipe()
pid = os.fork()
if pid == 0:
    code = 0
    try:
        os.close(read_end)
        worker(write_end)
    except BaseException:
        traceback.print_exc()
        code = 70
    finally:
        os._exit(code)
os.close(write_end)
deadline = time.monotonic() + cfg["timeout_s"]
data, timed_out, overflow, exited = bytearray(), False, False, False
poller = select.poll()
poller.register(read_end, select.POLLIN)
try:
    exit_fd = os.pidfd_open(pid)
    poller.register(exit_fd, select.POLLIN)
except (AttributeError, OSError):  # kernel before 5.3: poll the exit
    exit_fd = None
while not exited:
    left = deadline - time.monotonic()
    if left <= 0:
        timed_out = True
        os.kill(pid, signal.SIGKILL)
        break
    events = poller.poll(min(left, 0.05 if exit_fd is None else left) * 1000)
    for fd, _ in events:
        if fd == read_end:
            chunk = os.read(read_end, 65536)
            if not chunk:
                poller.unregister(read_end)
            data += chunk
        elif fd == exit_fd:
            exited = True
    if len(data) > MAX_MESSAGE:
        overflow = True
        os.kill(pid, signal.SIGKILL)
        break
    if exit_fd is None and os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
        exited = True
_, status = os.waitpid(pid, 0)
os.set_blocking(read_end, False)
try:
    while len(data) <= MAX_MESSAGE:
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        data += chunk
except BlockingIOError:  # a leftover still holds the pipe: what it wrote so far counts
    pass
if cfg["subreaper"]:
    kill_descendants()
if timed_out:
    out = {"status": "timeout"}
elif overflow or len(data) > MAX_MESSAGE:
    out = {"status": "protocol", "detail": "more than %d bytes on the result channel" % MAX_MESSAGE}
elif os.WIFSIGNALED(status):
    out = {"status": "signal", "signal": os.WTERMSIG(status)}
elif os.WEXITSTATUS(status) != 0:
    out = {"status": "exited", "code": os.WEXITSTATUS(status)}
else:
    out = check(bytes(data))
out["nonce"] = NONCE
os.write(1, (json.dumps(out) + "\n").encode())
"""


def run_python_grader(source: str, sample: dict[str, Any], item: dict[str, Any], limits: PythonLimits) -> float:
    """Run ``grade(sample, item)`` from ``source`` in a contained process; :class:`GradingFailure` on any failure."""
    isolation = network_isolation(limits.isolation)
    containment = process_containment(limits.containment)
    nonce = secrets.token_hex(16)
    try:
        payload = json.dumps(
            {
                "source": source,
                "sample": sample,
                "item": item,
                "nonce": nonce,
                "timeout_s": float(limits.timeout_s),
                "cpu_s": int(limits.cpu_s),
                "memory_bytes": int(limits.memory_mb) * 2**20,
                "file_bytes": int(limits.file_size_mb) * 2**20,
                "block_sockets": isolation == "socket_patch",
                "subreaper": containment == "subreaper",
            }
        ).encode()
    except (TypeError, ValueError) as e:
        raise GradingFailure(SAMPLE_PARSE_ERROR, f"sample/item are not JSON-serialisable: {e}") from None

    workdir = tempfile.mkdtemp(prefix="agentrft-pygrader-")
    try:
        try:
            result = run_process(
                _grader_argv(isolation, containment),
                _LAUNCH,
                RunLimits(wall_time_s=limits.timeout_s + BACKSTOP_GRACE_S, max_output_bytes=limits.max_output_bytes),
                stdin=payload,
                cwd=workdir,
                env={"PATH": os.defpath, "HOME": workdir, "LANG": "C.UTF-8", "TMPDIR": workdir},
            )
        except OSError as e:
            raise GradingFailure(PYTHON_GRADER_SERVER_ERROR,
                                 f"could not start the python grader process: {e}") from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if result.killed_reason == "wall_time":
        raise GradingFailure(PYTHON_GRADER_RUNTIME_ERROR, f"python grader timed out after {limits.timeout_s}s (killed)")
    if result.killed_reason == "output_limit":
        raise GradingFailure(
            PYTHON_GRADER_RUNTIME_ERROR,
            f"python grader wrote more than {limits.max_output_bytes} bytes of output (the run was killed)",
        )
    return _read_report(result.returncode, result.stdout, result.stderr, nonce, limits.timeout_s)


# The host holds the run as a process group: unshare (or the supervisor) leads a new session, and the
# supervisor is in that group, so killing the group at the backstop kills the supervisor -- and with it,
# in a pid namespace, every process of the run.
_LAUNCH = Launch(containment=Containment.PROCESS_GROUP)


def _grader_argv(isolation: Literal["namespace", "socket_patch"],
                 containment: Literal["pid_namespace", "subreaper"]) -> list[str]:
    """The runner's command line: ``python -I`` with the runner program, under ``unshare`` for namespaces."""
    argv = [sys.executable, "-I", "-c", _RUNNER]
    flags = ["-n"] if isolation == "namespace" else []
    if containment == "pid_namespace":
        flags += _PID_NAMESPACE_FLAGS
    if flags:
        argv = [shutil.which("unshare") or "unshare", "-r", *flags, *argv]
    return argv


def _read_report(returncode: int, out: bytes, err: bytes, nonce: str, timeout_s: float) -> float:
    """The value of the supervisor's one report line; :class:`GradingFailure` for anything else."""
    stderr = err.decode("utf-8", "replace")[-2000:]
    if not out:
        if stderr.lstrip().startswith("unshare:"):
            raise GradingFailure(PYTHON_GRADER_SERVER_ERROR, f"namespace sandbox failed: {stderr.strip()}")
        raise GradingFailure(PYTHON_GRADER_RUNTIME_ERROR,
                             f"python grader ended ({_status_text(returncode)}) without a report. {stderr}".strip())
    try:
        report = json.loads(out.decode("utf-8")) if out.count(b"\n") == 1 and out.endswith(b"\n") else None
    except (UnicodeDecodeError, ValueError):
        report = None
    if not isinstance(report, dict) or report.get("nonce") != nonce:
        raise GradingFailure(PYTHON_GRADER_RUNTIME_ERROR,
                             "python grader broke the result protocol: the result channel held something other "
                             "than this run's one report")
    status, detail = report.get("status"), report.get("detail")
    if status == "ok":
        value = report.get("value")
        if type(value) not in (int, float):
            raise GradingFailure(PYTHON_GRADER_RUNTIME_ERROR, f"python grader reported a non-number: {value!r:.80}")
        return float(value)
    if status == "error":
        raise GradingFailure(PYTHON_GRADER_RUNTIME_ERROR, f"grade() raised: {detail}")
    if status == "invalid":
        raise GradingFailure(PYTHON_GRADER_RUNTIME_ERROR, f"grade() must return a number, got {detail}")
    if status == "timeout":
        raise GradingFailure(PYTHON_GRADER_RUNTIME_ERROR,
                             f"python grader timed out after {timeout_s}s (every process it started was killed)")
    if status == "signal":
        raise GradingFailure(PYTHON_GRADER_RUNTIME_ERROR,
                             f"python grader {_status_text(-int(report.get('signal', 0)))}. {stderr}".strip())
    if status == "exited":
        raise GradingFailure(PYTHON_GRADER_RUNTIME_ERROR,
                             f"python grader exited {report.get('code')} without a result. {stderr}".strip())
    raise GradingFailure(PYTHON_GRADER_RUNTIME_ERROR, f"python grader broke the result protocol: {detail}")


def _status_text(returncode: int) -> str:
    """``exit N`` or ``killed by SIGNAME (why)`` for a :class:`subprocess.Popen`-style return code."""
    if returncode >= 0:
        return f"exit {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        return f"killed by signal {-returncode}"
    why = {"SIGXCPU": " (CPU time limit)", "SIGKILL": " (killed, e.g. CPU or memory limit)"}.get(name, "")
    return f"killed by {name}{why}"


class PythonGrader(Grader):
    spec: PythonSpec
    reward_range = None  # OpenAI lets python graders return any float; it must be finite
    invalid_score_flag = PYTHON_GRADER_RUNTIME_ERROR  # NaN / infinity from grade() is the user's runtime error

    def __init__(self, spec: PythonSpec, limits: PythonLimits | None = None):
        super().__init__(spec)
        self.limits = limits or PythonLimits()

    def score(self, sample: dict[str, Any], item: dict[str, Any]) -> float:
        return run_python_grader(self.spec.source, sample, item, self.limits)
