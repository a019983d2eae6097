"""The platform's own record: files, fine-tuning jobs, their events, and API key hashes, in one SQLite file.

``HOME/platform.db`` sits beside the job directories (``HOME/jobs/<job-id>/``, each holding the job's
config, its copied data files and its run directory with ``run.db``). The server process and the job
workers write it at once; WAL mode and short transactions make that safe, as for ``run.db``
(:mod:`agentrft.jobs.store`). The queue *is* the ``jobs`` table: a job is ``queued`` until a worker takes
it, and a server that was killed finds its ``running`` jobs there when it starts again
(:mod:`agentrft.platform.supervisor`), so nothing queued or running is lost.

API keys are stored as SHA-256 hashes only (:mod:`agentrft.platform.keys`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from agentrft.jobs.sqlite_file import SQLiteFile

DB_NAME = "platform.db"

JOB_STATUSES = ("validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled")
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id             TEXT PRIMARY KEY,
    filename       TEXT NOT NULL,
    purpose        TEXT NOT NULL,
    bytes          INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    status         TEXT NOT NULL,          -- processed | error
    status_details TEXT,
    formats        TEXT NOT NULL,          -- JSON list: the dataset formats every row satisfies
    rows           INTEGER NOT NULL,
    sha256         TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id               TEXT PRIMARY KEY,
    created_at       INTEGER NOT NULL,
    status           TEXT NOT NULL,
    model            TEXT NOT NULL,
    training_file    TEXT NOT NULL,
    validation_file  TEXT,
    suffix           TEXT,
    seed             INTEGER NOT NULL,
    metadata         TEXT,                 -- JSON or NULL
    method           TEXT NOT NULL,        -- JSON: the request's method object
    extension        TEXT,                 -- JSON: the request's agentrft object, or NULL
    config           TEXT NOT NULL,        -- JSON: the JobConfig the worker runs
    fine_tuned_model TEXT,
    finished_at      INTEGER,
    error            TEXT,                 -- JSON {code, message, param} or NULL
    trained_tokens   INTEGER,
    attempts         INTEGER NOT NULL DEFAULT 0,
    worker_pid       INTEGER,
    requested        TEXT,                 -- cancel | pause: what the server asked a running worker to do
    owner            TEXT                  -- the name of the API key that created the job ('local' without keys)
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created_at);
CREATE TABLE IF NOT EXISTS job_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id     TEXT NOT NULL,
    created_at REAL NOT NULL,
    level      TEXT NOT NULL,
    message    TEXT NOT NULL,
    data       TEXT
);
CREATE INDEX IF NOT EXISTS job_events_job ON job_events (job_id, id);
CREATE TABLE IF NOT EXISTS api_keys (
    hash       TEXT PRIMARY KEY,           -- hex sha256 of the key; the key itself is never stored
    name       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
"""

_JSON_COLUMNS = ("metadata", "method", "extension", "config", "error", "formats")


class PlatformDB:
    """``HOME/platform.db``: one connection per process (re-opened after a fork), statements under a lock."""

    def __init__(self, home: str | os.PathLike[str]) -> None:
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.path = self.home / DB_NAME
        self._db = SQLiteFile(self.path)
        self._db.script(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;")

    def tx(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction: it commits whole or not at all."""
        return self._db.transaction()

    def query(self, sql: str, params: tuple | list = ()) -> list[dict[str, Any]]:
        return [_decode(r) for r in self._db.rows(sql, params)]

    def close(self) -> None:
        self._db.close()

    # -- files -----------------------------------------------------------------------
    def insert_file(self, row: Mapping[str, Any]) -> None:
        self._insert("files", row)

    def get_file(self, file_id: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM files WHERE id = ?", (file_id,))
        return rows[0] if rows else None

    def list_files(self, purpose: str | None = None) -> list[dict[str, Any]]:
        if purpose is None:
            return self.query("SELECT * FROM files ORDER BY created_at DESC, id DESC")
        return self.query("SELECT * FROM files WHERE purpose = ? ORDER BY created_at DESC, id DESC", (purpose,))

    def delete_file(self, file_id: str) -> bool:
        with self.tx() as db:
            return db.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount > 0

    # -- jobs ------------------------------------------------------------------------
    def insert_job(self, row: Mapping[str, Any]) -> None:
        self._insert("jobs", row)

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    def list_jobs(self, after: str | None = None, limit: int = 20) -> tuple[list[dict[str, Any]], bool]:
        """Jobs newest first, starting after the job ``after`` (cursor pagination); and whether more follow."""
        sql, params = "SELECT * FROM jobs", []
        if after is not None:
            anchor = self.get_job(after)
            if anchor is not None:
                sql += " WHERE (created_at, id) < (?, ?)"
                params += [anchor["created_at"], anchor["id"]]
        rows = self.query(sql + " ORDER BY created_at DESC, id DESC LIMIT ?", params + [limit + 1])
        return rows[:limit], len(rows) > limit

    def active_jobs_of(self, owner: str) -> int:
        """Jobs of ``owner`` that are queued or running."""
        return int(self.query("SELECT COUNT(*) AS n FROM jobs WHERE owner = ? AND status IN ('queued', 'running')",
                              (owner,))[0]["n"])

    def jobs_with_status(self, *statuses: str) -> list[dict[str, Any]]:
        marks = ",".join("?" * len(statuses))
        return self.query(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY created_at, id", statuses)

    def update_job(self, job_id: str, *, expect: tuple[str, ...] | None = None, **fields: Any) -> bool:
        """Set ``fields`` on the job; with ``expect``, only while its status is one of those (compare-and-set,
        so the server and a worker never overwrite each other's decision). True when the row changed."""
        sets = ", ".join(f"{k} = ?" for k in fields)
        values = [_encode(k, v) for k, v in fields.items()]
        sql = f"UPDATE jobs SET {sets} WHERE id = ?"
        params = values + [job_id]
        if expect:
            sql += f" AND status IN ({','.join('?' * len(expect))})"
            params += list(expect)
        with self.tx() as db:
            return db.execute(sql, params).rowcount > 0

    # -- job events ------------------------------------------------------------------
    def add_event(self, job_id: str, message: str, level: str = "info", data: Mapping[str, Any] | None = None) -> None:
        with self.tx() as db:
            db.execute("INSERT INTO job_events (job_id, created_at, level, message, data) VALUES (?,?,?,?,?)",
                       (job_id, time.time(), level, message, None if data is None else json.dumps(dict(data))))

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM job_events WHERE job_id = ? ORDER BY id", (job_id,))

    # -- API keys --------------------------------------------------------------------
    def add_key_hash(self, digest: str, name: str) -> None:
        with self.tx() as db:
            db.execute("INSERT INTO api_keys (hash, name, created_at) VALUES (?,?,?)", (digest, name, int(time.time())))

    def key_hashes(self) -> dict[str, str]:
        return {r["hash"]: r["name"] for r in self.query("SELECT hash, name FROM api_keys")}

    def _insert(self, table: str, row: Mapping[str, Any]) -> None:
        cols = list(row)
        with self.tx() as db:
            db.execute(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                       [_encode(c, row[c]) for c in cols])


def _encode(column: str, value: Any) -> Any:
    return json.dumps(value) if column in _JSON_COLUMNS and value is not None else value


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    for c in _JSON_COLUMNS:
        if c in d and d[c] is not None:
            d[c] = json.loads(d[c])
    if "data" in d and isinstance(d["data"], str):
        d["data"] = json.loads(d["data"])
    return d
