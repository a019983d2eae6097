"""One SQLite file shared by one process's threads: the connection and transaction handling both stores use.

``run.db`` (:class:`agentrft.jobs.store.RunStore`) and the platform's ``platform.db``
(:class:`agentrft.platform.db.PlatformDB`) are each opened by several threads of a process (trainer threads,
metric sinks, a server's request handlers) and by several processes (workers, the dashboard). Each process
holds one connection (autocommit, WAL, ``synchronous=NORMAL``), re-opened after a ``fork`` because a
connection must not cross one; every statement runs under one re-entrant lock, and a write is one
``BEGIN IMMEDIATE`` transaction that commits whole or rolls back.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["SQLiteFile"]


class SQLiteFile:
    """The connection to ``path`` for this process, and statements under :attr:`lock`."""

    def __init__(self, path: str | os.PathLike[str], foreign_keys: bool = False) -> None:
        self.path = Path(path)
        self.lock = threading.RLock()
        self._foreign_keys = foreign_keys
        self._connection: sqlite3.Connection | None = None
        self._pid = -1

    def connection(self) -> sqlite3.Connection:
        """This process's connection (opened on first use, and again in a forked child). Hold :attr:`lock`."""
        if self._connection is None or self._pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            if self._foreign_keys:
                conn.execute("PRAGMA foreign_keys=ON")
            self._connection, self._pid = conn, os.getpid()
        return self._connection

    def script(self, sql: str) -> None:
        """Run a script (its statements spell out their own transaction, e.g. ``BEGIN IMMEDIATE; ... COMMIT;``)."""
        with self.lock:
            self.connection().executescript(sql)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock: it commits whole or rolls back."""
        with self.lock:
            db = self.connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def rows(self, sql: str, params: tuple | list = ()) -> list[sqlite3.Row]:
        with self.lock:
            return self.connection().execute(sql, params).fetchall()

    def close(self) -> None:
        """Close this process's connection (a forked child's inherited one is dropped, not closed)."""
        with self.lock:
            if self._connection is not None and self._pid == os.getpid():
                self._connection.close()
            self._connection = None
