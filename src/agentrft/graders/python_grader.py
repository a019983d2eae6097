"""The ``python`` grader: user ``grade(sample, item)`` code, run in the bubblewrap sandbox by warm workers.

User grader code is untrusted: a spec file can come from anyone, and its
``grade`` runs once per sample. By default it runs where it can touch
nothing of the host (:mod:`agentrft.graders.python_sandbox`): a bubblewrap
sandbox with a read-only system root, the interpreter and the packages
OpenAI documents for python graders, a private in-memory scratch as cwd and
``/tmp``, no network, no host home, checkout or run folders, and OpenAI's
limits (:class:`PythonLimits`). A pool of warm workers per grader source
(:mod:`agentrft.graders.python_pool`) loads the source once and forks one
child per grade, so a grade costs milliseconds, not an interpreter start.

Where bubblewrap cannot run, grading refuses with
``python_grader_server_error`` and a message naming the opt-in
:data:`UNSAFE_ENV` (``AGENTRFT_UNSAFE_GRADERS=1``). Set by the operator (an
environment variable, never a field of the spec, so a grader file cannot opt
itself out), it selects the **unsandboxed** path below instead: a fresh
``python -I`` process per grade, with rlimits, an empty working directory, a
minimal environment and no network where ``unshare -rn`` works -- but the
host's files readable and writable as the trainer's user.

Both paths share one result protocol (:mod:`agentrft.graders.python_protocol`):
a supervisor that never runs ``grade`` itself checks the one message of the
child that did (well formed, carrying a per-grade nonce, then a clean exit)
and reports once to the host. What a result is worth (docs/graders.md): the
user's ``grade`` code *is* the grader, so it can always choose its own value;
what holds is that the value is validated (a finite number:
:class:`PythonGrader` declares no range) and that a grade reports through one
protocol only. A stray write to the result channel (a bare number, garbage,
a second message, a message without the nonce) makes the grade a
``python_grader_runtime_error``, never a parse of the last number.

Any exception, timeout, crash, output flood, protocol break or
non-number/NaN/infinite result gives score 0 with
``python_grader_runtime_error`` and the message; a process that could not be
started at all, or a sandbox that cannot run here, gives
``python_grader_server_error``.

The unsandboxed runner, in detail. Each grade starts ``python -I`` with the
sample, the item and the nonce on stdin, through
:func:`agentrft.tools.sandbox.process.run_process` (output cap, wall-clock
backstop, reaping). Its supervisor forks the child, which sets the rlimits on
itself (not a ``preexec_fn``: that is unsafe in the threads
:func:`agentrft.graders.batch.grade_batch` grades from), points its stdout at
stderr and runs the code. Leftover processes: where ``unshare --pid --fork
--kill-child --mount-proc`` works the supervisor is pid 1 of a new pid
namespace (``pid_namespace``) and the kernel kills the rest with it; elsewhere
(``subreaper``, best effort) it is a child subreaper that SIGKILLs its
children until none is left. Network: a new, empty network namespace
(``unshare -rn``) when that works, otherwise ``socket.socket`` and friends are
replaced before the user code loads (``socket_patch``, best effort: ``ctypes``
gets around it).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from agentrft.errors import ConfigError
from agentrft.graders.base import (
    PYTHON_GRADER_RUNTIME_ERROR,
    PYTHON_GRADER_SERVER_ERROR,
    SAMPLE_PARSE_ERROR,
    Grader,
    GradingFailure,
)
from agentrft.graders.python_pool import pool_for
from agentrft.graders.python_protocol import PROTOCOL_CODE, report_value, status_text
from agentrft.graders.python_sandbox import WorkerSpec
from agentrft.graders.spec import PythonSpec
from agentrft.tools.sandbox.core import SandboxUnavailableError
from agentrft.tools.sandbox.process import Containment, Launch, RunLimits, run_process

Isolation = Literal["auto", "namespace", "socket_patch"]
ProcessContainment = Literal["auto", "pid_namespace", "subreaper"]

UNSAFE_ENV = "AGENTRFT_UNSAFE_GRADERS"
"""Set to ``1`` to run python grader code without the sandbox (the host's files are then readable and writable)."""
BACKSTOP_GRACE_S = 2.0
"""Unsandboxed: the host kills the run this long after ``timeout_s``, should the supervisor not have ended it."""
_PID_NAMESPACE_FLAGS = ["--pid", "--fork", "--kill-child", "--mount-proc"]


@dataclass(frozen=True)
class PythonLimits:
    """Resource limits of python-grader code, per grade unless a field says otherwise.

    The defaults follow OpenAI's python grader (2 GB of memory, 1 GB of disk, no network) with a shorter
    wall clock than its 2 minutes.
    """

    timeout_s: float = 30.0
    """Wall clock of one grade (and, sandboxed, of loading the source); then every process of it is killed."""
    cpu_s: int = 20
    """CPU seconds of the grading process (RLIMIT_CPU): SIGXCPU, then SIGKILL a second later."""
    memory_mb: int = 2048
    """Address space per process (RLIMIT_AS); allocations beyond fail with MemoryError."""
    file_size_mb: int = 16
    """Largest file the code may write (RLIMIT_FSIZE)."""
    disk_mb: int = 1024
    """Sandboxed: size of the in-memory scratch ``/work`` (cwd and HOME); ``/tmp`` and ``/dev/shm`` add 64 MiB each."""
    max_processes: int = 64
    """Sandboxed: processes and threads alive at once in a worker, its own included (RLIMIT_NPROC)."""
    max_workers: int = 8
    """Sandboxed: warm workers per grader source, i.e. grades of one grader that run at once."""
    extra_packages: tuple[str, ...] = ()
    """Sandboxed: installed distributions importable besides the ones OpenAI documents (with their dependencies)."""
    max_output_bytes: int = 4 * 2**20
    """stdout + stderr kept per grade (sandboxed: stderr, where prints go); more kills the grade."""
    isolation: Isolation = "auto"
    """Unsandboxed only: network isolation; auto = a network namespace when available."""
    containment: ProcessContainment = "auto"
    """Unsandboxed only: how leftover processes are killed; auto = a pid namespace when available."""

    def __post_init__(self) -> None:
        for name in ("timeout_s", "cpu_s", "memory_mb", "file_size_mb", "disk_mb", "max_processes", "max_workers",
                     "max_output_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"PythonLimits.{name} must be positive, got {getattr(self, name)!r}")


def unsafe_graders_enabled() -> bool:
    """Whether the operator opted into running python grader code unsandboxed (``AGENTRFT_UNSAFE_GRADERS=1``)."""
    return os.environ.get(UNSAFE_ENV) == "1"


def worker_spec(source: str, limits: PythonLimits) -> WorkerSpec:
    """What a sandboxed worker of ``source`` under ``limits`` is: the key of its pool (:func:`pool_for`)."""
    return WorkerSpec(source=source, timeout_s=float(limits.timeout_s), cpu_s=int(limits.cpu_s),
                      memory_mb=int(limits.memory_mb), file_size_mb=int(limits.file_size_mb),
                      disk_mb=int(limits.disk_mb), max_processes=int(limits.max_processes),
                      max_output_bytes=int(limits.max_output_bytes), extra_packages=tuple(limits.extra_packages),
                      max_workers=int(limits.max_workers))


def run_sandboxed(source: str, sample: dict[str, Any], item: dict[str, Any], limits: PythonLimits) -> float:
    """``grade(sample, item)`` of ``source`` on a warm sandboxed worker; :class:`GradingFailure` on any failure."""
    try:
        return pool_for(worker_spec(source, limits)).grade(sample, item)
    except SandboxUnavailableError as e:
        raise GradingFailure(
            PYTHON_GRADER_SERVER_ERROR,
            f"python grader code runs only in the bubblewrap sandbox, and it cannot run here: {e} To run grader "
            f"code without any isolation instead (it can then read and write your files and reach the network), "
            f"set {UNSAFE_ENV}=1.",
        ) from None


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


# The unsandboxed program: the supervisor (this process, which never runs user code) and the child it forks.
_RUNNER = PROTOCOL_CODE + r"""
cfg = json.loads(sys.stdin.buffer.read())
NONCE = cfg["nonce"]


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
    report_to(channel, result_message(lambda: load(cfg["source"])(cfg["sample"], cfg["item"])))


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
out = wait_child(pid, read_end, cfg["timeout_s"])
if cfg["subreaper"]:
    kill_descendants()
report_to(1, out)
"""


def run_unsandboxed(source: str, sample: dict[str, Any], item: dict[str, Any], limits: PythonLimits) -> float:
    """``grade(sample, item)`` of ``source`` in a fresh unsandboxed process; :class:`GradingFailure` on any failure."""
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
                             f"python grader ended ({status_text(returncode)}) without a report. {stderr}".strip())
    try:
        report = json.loads(out.decode("utf-8")) if out.count(b"\n") == 1 and out.endswith(b"\n") else None
    except (UnicodeDecodeError, ValueError):
        report = None
    if not isinstance(report, dict) or report.get("nonce") != nonce:
        raise GradingFailure(PYTHON_GRADER_RUNTIME_ERROR,
                             "python grader broke the result protocol: the result channel held something other "
                             "than this run's one report")
    return report_value(report, stderr, timeout_s)


class PythonGrader(Grader):
    spec: PythonSpec
    reward_range = None  # OpenAI lets python graders return any float; it must be finite
    invalid_score_flag = PYTHON_GRADER_RUNTIME_ERROR  # NaN / infinity from grade() is the user's runtime error

    def __init__(self, spec: PythonSpec, limits: PythonLimits | None = None):
        super().__init__(spec)
        self.limits = limits or PythonLimits()

    def score(self, sample: dict[str, Any], item: dict[str, Any]) -> float:
        if unsafe_graders_enabled():
            warnings.warn(f"agentrft: {UNSAFE_ENV}=1: python grader code runs WITHOUT the sandbox; it can read and "
                          f"write your files and reach the network", RuntimeWarning, stacklevel=2)
            return run_unsandboxed(self.spec.source, sample, item, self.limits)
        return run_sandboxed(self.spec.source, sample, item, self.limits)
