"""One process at a time per run directory: an advisory lock held for a training job's whole life.

Two ``agentrft train`` processes on one run directory (a second ``--resume``
beside a live run) would both write checkpoints and both log trajectories
into ``run.db``. :class:`RunDirectoryLock` takes ``flock`` on
``RUN_DIR/.lock`` before the job touches the store or the checkpoints; a
second job gets :class:`RunDirectoryBusy` naming the holder's pid and start
time. The kernel drops the lock when its process exits, however it exits
(``kill -9`` included), so a crashed run never leaves a stale lock; the file
itself stays (removing it would race with the next job).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from agentrft.errors import AgentRFTError

__all__ = ["LOCK_NAME", "RunDirectoryBusy", "RunDirectoryLock"]

LOCK_NAME = ".lock"


class RunDirectoryBusy(AgentRFTError):
    """Another live process holds the run directory."""


class RunDirectoryLock:
    """``with RunDirectoryLock(run_dir):`` holds ``run_dir`` for this process (creates the directory)."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunDirectoryLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunDirectoryBusy(f"run directory {self.path.parent} is in use by another training process "
                                   f"({holder}); wait for it to finish or stop it, then resume") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "since": time.time()}).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunDirectoryLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["since"])))
        return f"pid {int(info['pid'])}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"
