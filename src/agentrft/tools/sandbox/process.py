"""Process control for untrusted code: spawn it, pump its pipes, reap every process of the run.

What: :func:`run_process` starts an argv, feeds it stdin, reads stdout and
stderr as they stream under an output cap and a wall-clock deadline, and kills
and reaps the run before it returns a :class:`ProcessResult`. The sandbox's
tools and the python grader both run through it; they differ only in the argv
they build and the :class:`Launch` they pass (how the run is held and killed),
never in these mechanics.

Why one module: the failure modes of untrusted code are the same whoever runs
it. A flood of output must not fill the trainer's memory, a program that
closes its pipes and sleeps must not outlive the deadline, a background child
that keeps the pipes open must neither make the caller wait for it nor survive
the run, and a pid reused by an unrelated process must never be signalled.
``subprocess.communicate`` gives none of these; one implementation that does
is shared rather than approximated per caller.

How a run is held (:class:`Containment`):

* ``PROCESS_GROUP``: the program leads a new session; ending the run SIGKILLs
  that process group. A descendant that calls ``setsid()`` escapes the group;
  the caller's policy has to accept that (or use a pid namespace).
* ``BWRAP_PID_NAMESPACE``: argv is a bubblewrap command line that creates a pid
  namespace. ``--info-fd`` is inserted after ``argv[0]``; the namespace init it
  reports is held by a pidfd once checked to be pid 1 of a nested namespace.
  SIGKILL to it makes the kernel kill every process inside, and the pidfd
  turns readable only once that is done. This module knows nothing else about
  bwrap: the mounts and limits are in the caller's argv, the identity in its Launch.

The run ends when the program (the process started from ``argv``) exits, even
if something it left behind still holds the pipes: its leftovers are killed
while the program's pid is still unreaped (so the process group id cannot have
been reused), and the pipes are drained for at most :data:`DRAIN_GRACE_S`.
"""

from __future__ import annotations

import enum
import json
import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

__all__ = ["DRAIN_GRACE_S", "KILL_GRACE_S", "Containment", "Launch", "ProcessResult", "RunLimits", "exit_reason",
           "run_process"]

KILL_GRACE_S = 5.0  # how long to wait for a SIGKILLed run to be gone
DRAIN_GRACE_S = 1.0  # after the run ended: read what is left, never wait on a held pipe for longer
_CHUNK = 65536
_MEMORY_MARKERS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory")


class Containment(enum.Enum):
    """How a run is held and how every process of it is killed."""

    PROCESS_GROUP = "process_group"
    """The program leads a new session; killing the run SIGKILLs its process group."""
    BWRAP_PID_NAMESPACE = "bwrap_pid_namespace"
    """argv is a bwrap command line with a new pid namespace; its init is held by a pidfd and SIGKILLed."""


@dataclass(frozen=True)
class Launch:
    """How :func:`run_process` starts the argv: the containment and the identity it runs as."""

    containment: Containment = Containment.PROCESS_GROUP
    run_as: int | None = None
    """uid and gid to start the program as (only possible as root; supplementary groups are dropped)."""


@dataclass(frozen=True)
class RunLimits:
    """The limits :func:`run_process` itself enforces (rlimits and the like belong to the caller's argv)."""

    wall_time_s: float
    """Seconds from start until the whole run is SIGKILLed."""
    max_output_bytes: int
    """stdout + stderr kept; the byte beyond kills the run."""


@dataclass
class ProcessResult:
    """What one run produced, as bytes; ``returncode`` follows :class:`subprocess.Popen` (-N: signal N)."""

    returncode: int
    stdout: bytes
    stderr: bytes
    killed_reason: str | None = None  # wall_time | output_limit: the run was killed here
    truncated: bool = False  # output went past max_output_bytes (and the run was killed)
    wall_s: float = 0.0

    @property
    def exit_code(self) -> int:
        """The status in the shell and bwrap convention: 128+N when the program died of signal N."""
        return 128 - self.returncode if self.returncode < 0 else self.returncode


def run_process(argv: Sequence[str], launch: Launch, limits: RunLimits, *, stdin: bytes | None = None,
                cwd: str | None = None, env: Mapping[str, str] | None = None) -> ProcessResult:
    """Start ``argv``, stream its output under ``limits``, leave nothing alive; raise :class:`OSError` if it cannot start.

    ``env`` is the program's whole environment (``None`` inherits ours: pass one for untrusted code).
    """
    argv = list(argv)
    isolated = launch.containment is Containment.BWRAP_PID_NAMESPACE
    info_r, info_w = os.pipe() if isolated else (-1, -1)
    if isolated:
        argv = argv[:1] + ["--info-fd", str(info_w)] + argv[1:]
    identity = {} if launch.run_as is None else {"user": launch.run_as, "group": launch.run_as, "extra_groups": []}
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            start_new_session=True,  # the process group to kill; bwrap needs no terminal either
            pass_fds=(info_w,) if isolated else (),
            **identity,
        )
    except BaseException:
        if isolated:
            os.close(info_r)
            os.close(info_w)
        raise
    if isolated:
        os.close(info_w)
    reaper = _Reaper(proc, info_r if isolated else None)
    try:
        out, err, truncated, reason = _pump(proc, stdin, limits, start, reaper)
        if reason is None:
            try:
                proc.wait(timeout=max(0.0, start + limits.wall_time_s - time.monotonic()))
            except subprocess.TimeoutExpired:
                reason = "wall_time"
                reaper.kill()
                proc.wait()
    finally:
        reaper.kill_and_wait_gone()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    code = proc.returncode
    return ProcessResult(
        returncode=code if code is not None else -signal.SIGKILL,
        stdout=out,
        stderr=err,
        killed_reason=reason,
        truncated=truncated,
        wall_s=time.monotonic() - start,
    )


def exit_reason(exit_code: int | None, stderr: bytes) -> str | None:
    """Why a program that exited by itself failed, in rlimit terms: cpu_time | file_size | memory | signal:NAME."""
    if exit_code is None or exit_code == 0:
        return None
    if 128 < exit_code <= 128 + 64:
        sig = exit_code - 128
        if sig == signal.SIGXCPU:
            return "cpu_time"
        if sig == signal.SIGXFSZ:
            return "file_size"
        try:
            return f"signal:{signal.Signals(sig).name}"
        except ValueError:
            return f"signal:{sig}"
    if any(m.encode() in stderr[-4000:] for m in _MEMORY_MARKERS):
        return "memory"
    return None


def _pump(proc: subprocess.Popen[bytes], stdin: bytes | None, limits: RunLimits, start: float,
          reaper: "_Reaper") -> tuple[bytes, bytes, bool, str | None]:
    """Feed stdin and read stdout/stderr without blocking until EOF, the program's exit, the deadline or the cap."""
    assert proc.stdout is not None and proc.stderr is not None
    outputs = (proc.stdout.fileno(), proc.stderr.fileno())
    buffers = {fd: bytearray() for fd in outputs}
    budget = limits.max_output_bytes
    truncated = False
    reason: str | None = None
    sel = selectors.DefaultSelector()
    for fd in outputs:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    if reaper.info_fd is not None:
        sel.register(reaper.info_fd, selectors.EVENT_READ)
    exit_fd = _pidfd(proc.pid)  # readable once the program has exited; it stays unreaped until proc.wait
    if exit_fd is not None:
        sel.register(exit_fd, selectors.EVENT_READ)
    pending = memoryview(stdin or b"")
    if proc.stdin is not None:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE)
    deadline = start + limits.wall_time_s
    drain_until: float | None = None  # set once the run has ended (killed, or the program exited)
    try:
        while any(fd in sel.get_map() for fd in outputs):
            now = time.monotonic()
            if reason is None and drain_until is None and now >= deadline:
                reason = "wall_time"
                reaper.kill()
            if reason is not None and drain_until is None:
                drain_until = now + DRAIN_GRACE_S
            if drain_until is not None and now >= drain_until:
                break
            limit = (drain_until if drain_until is not None else deadline) - now
            for key, events in sel.select(timeout=max(0.0, limit)):
                fd = key.fd
                if fd == exit_fd:
                    sel.unregister(fd)
                    os.close(fd)
                    exit_fd = None
                    reaper.kill_leftovers()
                    drain_until = drain_until or time.monotonic() + DRAIN_GRACE_S
                    continue
                if fd == reaper.info_fd:
                    if not reaper.read_info():
                        sel.unregister(fd)
                        reaper.close_info()
                    continue
                if events & selectors.EVENT_WRITE:
                    try:
                        pending = pending[os.write(fd, pending[:_CHUNK]):]
                    except BlockingIOError:
                        pass
                    except BrokenPipeError:  # the program stopped reading: fine
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(fd)
                        proc.stdin.close()  # type: ignore[union-attr]
                    continue
                try:
                    chunk = os.read(fd, _CHUNK)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(fd)
                    continue
                if reason is not None:
                    continue  # killed: drain and discard
                keep = chunk[:budget]
                buffers[fd] += keep
                budget -= len(keep)
                if len(keep) < len(chunk):
                    truncated = True
                    reason = "output_limit"
                    reaper.kill()
    finally:
        sel.close()
        if exit_fd is not None:
            os.close(exit_fd)
    return bytes(buffers[outputs[0]]), bytes(buffers[outputs[1]]), truncated, reason


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):  # kernel before 5.3: the run then ends at EOF or the deadline
        return None


class _Reaper:
    """Kills a run and waits until every process of it is gone.

    In a bwrap pid namespace the init (reported on ``--info-fd``) is held by a
    pidfd: SIGKILL to it makes the kernel kill the whole namespace, and the
    pidfd turns readable only after that is done. In a plain process group
    only the group can be killed (daemons that setsid escape).
    """

    def __init__(self, proc: subprocess.Popen[bytes], info_fd: int | None):
        self.proc = proc
        self.isolated = info_fd is not None
        self.info_fd = info_fd
        self._info = b""
        self._pidfd: int | None = None

    def read_info(self) -> bool:
        """Consume available ``--info-fd`` output; False at EOF."""
        assert self.info_fd is not None
        try:
            chunk = os.read(self.info_fd, 4096)
        except BlockingIOError:
            return True
        self._info += chunk
        return bool(chunk)

    def close_info(self) -> None:
        """After EOF on the info pipe: take a pidfd on the namespace init it named."""
        assert self.info_fd is not None
        os.close(self.info_fd)
        self.info_fd = None
        try:
            pid = int(json.loads(self._info.decode() or "{}").get("child-pid", 0))
        except (ValueError, AttributeError):
            pid = 0
        if pid <= 0:
            return
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return  # already gone and reaped: so is its namespace
        if _is_namespace_init(pid):
            self._pidfd = pidfd
        else:  # the pid was reused by an unrelated process: never signal it
            os.close(pidfd)

    def kill(self) -> None:
        """SIGKILL the run: the namespace init when held, else the process group and the program."""
        if self._pidfd is not None:
            # Only the init: bwrap outside then reaps it and exits. Killing bwrap too would orphan the
            # init to the host's pid 1 (a zombie until that reaps it).
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
                return
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            if not self.isolated:
                self._kill_group()
            self.proc.kill()  # bwrap: --die-with-parent takes the namespace down as well

    def kill_leftovers(self) -> None:
        """The program has exited and is not yet reaped: SIGKILL what it left behind."""
        if self._pidfd is not None:
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
        elif not self.isolated:
            self._kill_group()  # the unreaped program still holds the group id: it cannot name another group

    def kill_and_wait_gone(self) -> None:
        """End the run for good: kill, reap the program, and wait for the namespace to empty."""
        if self.proc.poll() is None:
            self.kill()
        try:
            self.proc.wait(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.info_fd is not None:  # bwrap finished before we read all its info: it is buffered
            os.set_blocking(self.info_fd, False)
            with selectors.DefaultSelector() as sel:
                sel.register(self.info_fd, selectors.EVENT_READ)
                give_up = time.monotonic() + 1.0
                while self.read_info() and time.monotonic() < give_up:
                    sel.select(timeout=0.05)
            self.close_info()
        if self._pidfd is not None:
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            with selectors.DefaultSelector() as sel:
                sel.register(self._pidfd, selectors.EVENT_READ)  # readable once the namespace is empty
                sel.select(timeout=KILL_GRACE_S)
            os.close(self._pidfd)
            self._pidfd = None
        elif not self.isolated:
            self._kill_group()  # leftovers of the group

    def _kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _is_namespace_init(pid: int) -> bool:
    """True when ``pid`` is pid 1 of a nested pid namespace (what bwrap's info-fd reports)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    ids = line.split()[1:]
                    return len(ids) >= 2 and ids[-1] == "1"
    except OSError:
        return False
    return False
