"""The job queue's supervisor: starts queued jobs in worker processes, reaps them, cancels and pauses them.

The queue is the ``jobs`` table (:mod:`agentrft.platform.db`). One thread in the server polls it:

* at start, jobs the table still says are ``running`` belong to a server that died: they go back to
  ``queued`` and their workers resume from their latest checkpoints (the run's seeds are a function of
  (seed, step), so a resumed job ends where an uninterrupted one would);
* while fewer than ``concurrency`` workers run, the oldest ``queued`` job gets one
  (:mod:`agentrft.platform.worker`, its output in ``JOB_DIR/worker.log``);
* a worker that exits is reaped: the worker itself records ``succeeded`` or ``failed``; one that died
  without recording (killed, out of memory) is ``failed`` with its exit status; one stopped on request
  is ``cancelled`` or ``paused``.

Cancel and pause send SIGTERM (the runner stops with its last checkpoint intact) and wait for the worker
to exit, SIGKILL after ``stop_timeout_s``, so when the API answers, the worker is gone.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agentrft.platform.db import PlatformDB

logger = logging.getLogger(__name__)


@dataclass
class _Worker:
    job_id: str
    process: subprocess.Popen
    log: object
    requested: str | None = None  # cancel | pause
    done: threading.Event = field(default_factory=threading.Event)


class Supervisor:
    def __init__(self, db: PlatformDB, concurrency: int = 1, poll_s: float = 0.2, stop_timeout_s: float = 30.0):
        self.db = db
        self.concurrency = concurrency
        self.poll_s = poll_s
        self.stop_timeout_s = stop_timeout_s
        self._workers: dict[str, _Worker] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        for job in self.db.jobs_with_status("running"):
            self.db.update_job(job["id"], expect=("running",), status="queued", worker_pid=None)
            self.db.add_event(job["id"], "the server restarted while this job ran; it resumes from its latest "
                                         "checkpoint", level="warn")
        self._thread = threading.Thread(target=self._loop, name="agentrft-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop and every worker (their jobs stay ``running`` in the table and resume at the next start)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            workers = list(self._workers.values())
        for w in workers:
            self._terminate(w)

    def wake(self) -> None:
        """A job was queued: look now instead of at the next poll."""
        self._wake.set()

    # -- requests from the API -----------------------------------------------------------
    def stop_job(self, job_id: str, request: str, if_not_running: Callable[[], bool]) -> bool:
        """Cancel or pause (``request``) a job. A running one: SIGTERM, wait for its worker to exit. One no worker
        runs: ``if_not_running()`` (the caller's compare-and-set on its status), called under the lock that
        starting a worker takes, so a job is never started between the look and the change. Returns whether
        the job was stopped or changed."""
        with self._lock:
            worker = self._workers.get(job_id)
            if worker is None:
                return if_not_running()
            worker.requested = request
        self._terminate(worker)
        worker.done.wait(timeout=self.stop_timeout_s + 5)
        return True

    def running(self) -> list[str]:
        with self._lock:
            return list(self._workers)

    def worker_pid(self, job_id: str) -> int | None:
        with self._lock:
            w = self._workers.get(job_id)
            return None if w is None else w.process.pid

    # -- the loop ------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._reap()
                self._start_queued()
            except Exception:  # the loop must outlive a bad row or a failed spawn
                logger.exception("supervisor pass failed")
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def _start_queued(self) -> None:
        with self._lock:
            free = self.concurrency - len(self._workers)
        if free <= 0:
            return
        for job in self.db.jobs_with_status("queued")[:free]:
            with self._lock:  # the status change and the worker's registration are one step for stop_job
                if not self.db.update_job(job["id"], expect=("queued",), status="running",
                                          attempts=job["attempts"] + 1, requested=None):
                    continue  # cancelled or paused meanwhile
                self._spawn(job)

    def _spawn(self, job: dict) -> None:
        job_dir = self.db.home / "jobs" / job["id"]
        log = open(job_dir / "worker.log", "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        process = subprocess.Popen([sys.executable, "-m", "agentrft.platform.worker", str(self.db.home), job["id"]],
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                   cwd=job_dir, start_new_session=True)
        with self._lock:
            self._workers[job["id"]] = _Worker(job["id"], process, log)
        self.db.update_job(job["id"], worker_pid=process.pid)
        self.db.add_event(job["id"], "Fine-tuning job started")

    def _reap(self) -> None:
        with self._lock:
            finished = [w for w in self._workers.values() if w.process.poll() is not None]
        for w in finished:
            code = w.process.returncode
            w.log.close()
            if w.requested in ("cancel", "pause"):
                status = "cancelled" if w.requested == "cancel" else "paused"
                if self.db.update_job(w.job_id, expect=("running",), status=status, worker_pid=None,
                                      finished_at=int(time.time()) if status == "cancelled" else None):
                    self.db.add_event(w.job_id, "The job was cancelled" if status == "cancelled" else
                                      "The job was paused; resume it to continue from its latest checkpoint")
            elif self._stop.is_set():
                pass  # the server is shutting down: the job stays running and resumes at the next start
            else:
                changed = self.db.update_job(w.job_id, expect=("running",), status="failed", worker_pid=None,
                                             finished_at=int(time.time()),
                                             error={"code": "worker_died", "param": None,
                                                    "message": f"the job's worker exited with status {code} "
                                                               f"without finishing; see its worker.log"})
                if changed:
                    self.db.add_event(w.job_id, f"The job's worker exited with status {code}", level="error")
                else:
                    self.db.update_job(w.job_id, worker_pid=None)
            with self._lock:
                self._workers.pop(w.job_id, None)
            w.done.set()

    def _terminate(self, w: _Worker) -> None:
        if w.process.poll() is not None:
            return
        try:
            os.killpg(w.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            w.process.wait(timeout=self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(w.process.pid, signal.SIGKILL)
            w.process.wait()
        if self._stop.is_set() or self._thread is None or not self._thread.is_alive():
            self._reap()


def job_dir(home: Path, job_id: str) -> Path:
    return home / "jobs" / job_id
