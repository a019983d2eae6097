"""Warm sandboxed workers for python graders: one pool per grader source, one request at a time per worker.

What: :func:`pool_for` returns the :class:`WorkerPool` of a
:class:`~agentrft.graders.python_sandbox.WorkerSpec` (a grader's source and
limits), and :meth:`WorkerPool.grade` scores one sample on one of its workers.
A worker is a bubblewrap sandbox (:mod:`agentrft.graders.python_sandbox`)
whose supervisor loaded the source once; each grade is one line of JSON in
(``{"nonce", "sample", "item"}``) and one report line out, and runs in a child
the supervisor forks, so every grade starts from the state loading left.

Why a pool: starting a sandboxed interpreter and importing numpy costs a few
hundred milliseconds, a forked grade a few. A worker is never shared between
two sources (nor two sets of limits), so nothing one grader leaves can reach
another's grades.

What the host enforces itself, whatever the code inside does:

* the wall clock: a grade not reported within ``timeout_s`` (loading the
  source: another ``timeout_s``) SIGKILLs the worker's pid-namespace init, so
  every process of it dies, and the worker is replaced;
* output: more than ``max_output_bytes`` on stderr in one grade kills it;
* the protocol: each grade's report must be exactly one line carrying that
  grade's nonce, and nothing may follow it;
* reuse: a worker is kept only after a grade whose child ended by itself
  with its one message and whose scratch was cleared; any crash, timeout,
  protocol break or leftover replaces it.

Workers are started from one long-lived thread: bwrap's ``--die-with-parent``
follows the thread that started it, and a worker started from a short-lived
grading thread would die with that thread.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import selectors
import subprocess
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agentrft.graders.base import (
    PYTHON_GRADER_RUNTIME_ERROR,
    PYTHON_GRADER_SERVER_ERROR,
    SAMPLE_PARSE_ERROR,
    GradingFailure,
)
from agentrft.graders.python_protocol import CLEAN_STATUSES, report_value, status_text
from agentrft.graders.python_sandbox import INSTALL_HINT, WorkerSpec, resolve_bwrap, worker_command, worker_config
from agentrft.tools.sandbox.core import SandboxUnavailableError
from agentrft.tools.sandbox.process import DRAIN_GRACE_S, _Reaper

__all__ = ["MAX_POOLS", "WorkerPool", "close_pools", "pool_for"]

MAX_POOLS = 8
"""Pools kept at once; starting a ninth closes the least recently used one (and its idle workers)."""
MAX_REPORT_BYTES = 2 * 2**20  # one report line; a longer one breaks the protocol
_CHUNK = 65536
_STAGING_FAILED = 125  # python_sandbox._STAGE_SCRIPT's exit status
_LAUNCHERS = ("bwrap:", "unshare:", "setpriv:", "mount:")  # their errors mean the sandbox, not the grader, failed

_spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentrft-grader-spawn")


class _WorkerEnded(Exception):
    """The worker's exchange ended without a report line; ``why`` is wall_time | output_limit | protocol | ended."""

    def __init__(self, why: str, stderr: bytes):
        super().__init__(why)
        self.why = why
        self.stderr = stderr


class _Worker:
    """One sandboxed supervisor process: started, loaded, then asked one grade at a time."""

    def __init__(self, proc: subprocess.Popen[bytes], reaper: _Reaper):
        self.proc = proc
        self.reaper = reaper
        self._out = bytearray()  # stdout read past the last report line
        self._stderr = bytearray()  # stderr of the current exchange
        self._closed = False

    @classmethod
    def start(cls, spec: WorkerSpec) -> "_Worker":
        """Start a worker and wait until it has loaded the source; :class:`GradingFailure` if it cannot."""
        bwrap = resolve_bwrap()
        info_r, info_w = os.pipe()
        try:
            argv, run_as, env = worker_command(spec, bwrap, info_w)
            identity = {} if run_as is None else {"user": run_as, "group": run_as, "extra_groups": []}
            proc = _spawner.submit(subprocess.Popen, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env=env, start_new_session=True, pass_fds=(info_w,),
                                   **identity).result()
        except OSError as e:
            os.close(info_r)
            raise GradingFailure(PYTHON_GRADER_SERVER_ERROR,
                                 f"could not start the python grader process: {e}") from None
        finally:
            os.close(info_w)
        worker = cls(proc, _Reaper(proc, info_r))
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            os.set_blocking(pipe.fileno(), False)  # type: ignore[union-attr]
        try:
            worker._hold_namespace(time.monotonic() + spec.timeout_s)
            ready = worker._exchange(json.dumps(worker_config(spec)).encode() + b"\n", spec.timeout_s,
                                     spec.max_output_bytes)
        except _WorkerEnded as e:
            raise worker._start_failure(e, spec) from None
        if ready != b'{"status": "ready"}\n' or worker._out:
            worker.close()
            raise GradingFailure(PYTHON_GRADER_RUNTIME_ERROR, "python grader broke the result protocol while loading "
                                 "its source: its first line was not the worker's ready line")
        return worker

    def grade(self, spec: WorkerSpec, request: bytes, nonce: str) -> tuple[dict[str, Any], str]:
        """``(report, stderr)`` of one grade request; :class:`GradingFailure` when there is no valid report.

        After a failure the worker must not be reused.
        """
        try:
            line = self._exchange(request, spec.timeout_s, spec.max_output_bytes)
        except _WorkerEnded as e:
            raise self._failure(e, spec) from None
        try:
            report = json.loads(line)
        except ValueError:
            report = None
        if not isinstance(report, dict) or report.get("nonce") != nonce or self._out:
            raise GradingFailure(PYTHON_GRADER_RUNTIME_ERROR,
                                 "python grader broke the result protocol: the report channel held something other "
                                 "than this grade's one report")
        return report, self._stderr.decode("utf-8", "replace")[-2000:]

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        """SIGKILL the worker's namespace and wait until every process of it is gone (once; later calls return)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.reaper.kill_and_wait_gone()
        finally:
            for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()

    # -- the exchange ----------------------------------------------------------------------------------------
    def _hold_namespace(self, deadline: float) -> None:
        """Read bwrap's ``--info-fd`` to its end and take a pidfd on the namespace init it names."""
        info_fd = self.reaper.info_fd
        assert info_fd is not None
        os.set_blocking(info_fd, False)
        with selectors.DefaultSelector() as sel:
            sel.register(info_fd, selectors.EVENT_READ)
            while self.reaper.read_info():
                if time.monotonic() >= deadline:
                    raise _WorkerEnded("wall_time", b"")
                sel.select(timeout=max(0.0, deadline - time.monotonic()))
        self.reaper.close_info()

    def _exchange(self, data: bytes, timeout_s: float, max_output: int) -> bytes:
        """Send ``data`` and read until one line on stdout; stderr meanwhile goes to ``self._stderr``."""
        self._stderr = bytearray()
        deadline = time.monotonic() + timeout_s
        pipes = (self.proc.stdin, self.proc.stdout, self.proc.stderr)
        stdin, stdout, stderr = (p.fileno() for p in pipes)  # type: ignore[union-attr]
        pending = memoryview(data)
        with selectors.DefaultSelector() as sel:
            sel.register(stdout, selectors.EVENT_READ)
            sel.register(stderr, selectors.EVENT_READ)
            sel.register(stdin, selectors.EVENT_WRITE)
            while (end := self._out.find(b"\n")) < 0:
                if len(self._out) > MAX_REPORT_BYTES:
                    raise _WorkerEnded("protocol", bytes(self._stderr))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _WorkerEnded("wall_time", bytes(self._stderr))
                for key, _ in sel.select(timeout=left):
                    if key.fd == stdin:
                        try:
                            pending = pending[os.write(stdin, pending[:_CHUNK]):]
                        except BlockingIOError:
                            continue
                        except BrokenPipeError:
                            pending = pending[:0]
                        if not pending:
                            sel.unregister(stdin)
                    elif key.fd == stdout:
                        chunk = _read(stdout)
                        if chunk == b"":  # the supervisor is gone: so is its namespace, soon
                            try:
                                self.proc.wait(timeout=DRAIN_GRACE_S)
                            except subprocess.TimeoutExpired:
                                pass
                            self._drain_stderr(max_output)
                            raise _WorkerEnded("ended", bytes(self._stderr))
                        self._out += chunk or b""
                    elif not self._read_stderr(stderr, max_output):
                        sel.unregister(stderr)
        line = bytes(self._out[: end + 1])
        del self._out[: end + 1]
        self._drain_stderr(max_output)  # the child's stderr was written before the supervisor reported
        return line

    def _read_stderr(self, fd: int, max_output: int) -> bool:
        """Read what stderr holds into the grade's output; False at EOF."""
        chunk = _read(fd)
        if chunk == b"":
            return False
        self._stderr += chunk or b""
        if len(self._stderr) > max_output:
            raise _WorkerEnded("output_limit", bytes(self._stderr[:max_output]))
        return True

    def _drain_stderr(self, max_output: int) -> None:
        fd = self.proc.stderr.fileno()  # type: ignore[union-attr]
        while True:
            before = len(self._stderr)
            if not self._read_stderr(fd, max_output) or len(self._stderr) == before:
                return

    # -- failures ----------------------------------------------------------------------------------------------
    def _failure(self, e: _WorkerEnded, spec: WorkerSpec) -> GradingFailure:
        """The grading failure of an exchange that ended without a report (the worker is closed here)."""
        self.close()
        stderr = e.stderr.decode("utf-8", "replace")[-2000:]
        if e.why == "wall_time":
            return GradingFailure(PYTHON_GRADER_RUNTIME_ERROR, f"python grader timed out after {spec.timeout_s}s "
                                  f"(killed, with every process it started)")
        if e.why == "output_limit":
            return GradingFailure(PYTHON_GRADER_RUNTIME_ERROR, f"python grader wrote more than "
                                  f"{spec.max_output_bytes} bytes of output (the run was killed)")
        if e.why == "protocol":
            return GradingFailure(PYTHON_GRADER_RUNTIME_ERROR, f"python grader broke the result protocol: more than "
                                  f"{MAX_REPORT_BYTES} bytes on the report channel without a line end")
        code = self.proc.returncode if self.proc.returncode is not None else -9
        code = -(code - 128) if 128 < code <= 128 + 64 else code  # bwrap and its init: 128+N for signal N
        return GradingFailure(PYTHON_GRADER_RUNTIME_ERROR,
                              f"python grader ended ({status_text(code)}) without a result. {stderr}".strip())

    def _start_failure(self, e: _WorkerEnded, spec: WorkerSpec) -> GradingFailure | SandboxUnavailableError:
        """Why a worker did not come up: the sandbox itself (bwrap or staging failed), or the grader's loading."""
        self.close()
        stderr = e.stderr.decode("utf-8", "replace").strip()
        if e.why == "ended" and (stderr.startswith(_LAUNCHERS) or self.proc.returncode == _STAGING_FAILED):
            return SandboxUnavailableError(f"bubblewrap could not start the grader sandbox: {stderr[-1000:]}. "
                                           f"{INSTALL_HINT}")
        failure = self._failure(e, spec)
        if e.why == "wall_time":
            failure = GradingFailure(PYTHON_GRADER_RUNTIME_ERROR, f"python grader timed out after {spec.timeout_s}s "
                                     f"while loading its source (killed)")
        return failure


def _read(fd: int) -> bytes | None:
    """A chunk of ``fd``; ``b""`` at EOF, ``None`` when nothing is there now."""
    try:
        return os.read(fd, _CHUNK)
    except BlockingIOError:
        return None


class WorkerPool:
    """Up to ``spec.max_workers`` warm workers of one spec; :meth:`grade` may be called from many threads."""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.workers_started = 0
        self._idle: list[_Worker] = []
        self._live = 0
        self._closed = False
        self._cond = threading.Condition()

    def grade(self, sample: Any, item: Any) -> float:
        """Score one sample on a warm worker (starting one if none is free); :class:`GradingFailure` on failure."""
        nonce = secrets.token_hex(16)
        try:
            request = json.dumps({"nonce": nonce, "sample": sample, "item": item}).encode() + b"\n"
        except (TypeError, ValueError) as e:
            raise GradingFailure(SAMPLE_PARSE_ERROR, f"sample/item are not JSON-serialisable: {e}") from None
        worker = self._acquire()
        reusable = False
        try:
            report, stderr = worker.grade(self.spec, request, nonce)
            reusable = report.get("status") in CLEAN_STATUSES and report.get("scratch_cleared") is True
        finally:
            self._release(worker, reusable)
        return report_value(report, stderr, self.spec.timeout_s)

    def close(self) -> None:
        """Kill the idle workers now; busy ones are killed when their grade ends."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._live -= len(idle)
            self._cond.notify_all()
        for worker in idle:
            worker.close()

    @property
    def idle_workers(self) -> int:
        return len(self._idle)

    def _acquire(self) -> _Worker:
        with self._cond:
            while True:
                if self._closed:
                    raise GradingFailure(PYTHON_GRADER_SERVER_ERROR, "the python grader's worker pool was closed")
                while self._idle:
                    worker = self._idle.pop()
                    if worker.alive:
                        return worker
                    self._live -= 1  # died while idle (e.g. killed from outside): replace it
                    worker.close()
                if self._live < self.spec.max_workers:
                    self._live += 1
                    break
                self._cond.wait()
        try:
            worker = _Worker.start(self.spec)
        except BaseException:
            with self._cond:
                self._live -= 1
                self._cond.notify()
            raise
        with self._cond:
            self.workers_started += 1
        return worker

    def _release(self, worker: _Worker, reusable: bool) -> None:
        with self._cond:
            keep = reusable and not self._closed and worker.alive
            if keep:
                self._idle.append(worker)
            else:
                self._live -= 1
            self._cond.notify()
        if not keep:
            worker.close()


_pools: OrderedDict[WorkerSpec, WorkerPool] = OrderedDict()
_pools_lock = threading.Lock()


def pool_for(spec: WorkerSpec) -> WorkerPool:
    """The pool of ``spec``, made on first use; the least recently used pool beyond :data:`MAX_POOLS` is closed."""
    with _pools_lock:
        pool = _pools.pop(spec, None) or WorkerPool(spec)
        _pools[spec] = pool
        evicted = [_pools.popitem(last=False)[1] for _ in range(len(_pools) - MAX_POOLS)]
    for old in evicted:
        old.close()
    return pool


def close_pools() -> None:
    """Close every pool (their idle workers are killed now, busy ones after their grade)."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.close()


def _forget_after_fork() -> None:
    """In a forked child: the workers and the spawner thread are the parent's; start afresh, touching nothing."""
    global _pools, _pools_lock, _spawner
    _pools, _pools_lock = OrderedDict(), threading.Lock()
    _spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentrft-grader-spawn")


atexit.register(close_pools)
os.register_at_fork(after_in_child=_forget_after_fork)
