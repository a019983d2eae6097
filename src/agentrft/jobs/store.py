"""The run store: one embedded SQLite database per run directory.

Every run lives in a directory (``run_dir``); its record is ``run_dir/run.db``.
It holds what a person (or the dashboard, or the job API) needs to understand
a run after the fact, and what a resumed run needs to carry on:

* ``runs``         — one row: method, status, the resolved config and the
                     hashes (dataset, grader, base model, ...) that identify
                     what was trained on;
* ``events``       — an append-only log of things that happened (``resume``,
                     ``nonfinite_skip``, ``early_stop``, status changes);
* ``metrics``      — long format ``(step, split, name) -> value``; the key is
                     the primary key, so re-logging a step after a resume
                     replaces the row instead of duplicating it;
* ``trajectories`` — every sampled trajectory as JSON (``Trajectory.to_dict()``
                     plus its grade and reward) with the columns dashboards
                     filter on indexed;
* ``checkpoints``  — the checkpoints written (their files are managed by
                     :mod:`agentrft.jobs.checkpoint`, which owns crash safety).

Why SQLite and not JSONL files: the dashboard reads while the trainer writes.
WAL mode lets readers in other processes see committed rows without blocking
the writer, and a transaction either lands whole or not at all — a ``kill -9``
mid-write never leaves a half-written line to trip over. ``synchronous=NORMAL``
keeps that consistency (it can only lose the last few commits on a power cut,
never corrupt the file); model state, the thing that must survive, is made
durable by the checkpoint protocol, not here.

Privacy: every text the store writes (trajectories, event messages and data, status messages, the resolved
config) passes through the run's :class:`~agentrft.privacy.Redactor` (``privacy`` in the job's config,
docs/privacy.md): given to the constructor or set as :attr:`RunStore.privacy` by the runner, and otherwise
read from the run's saved config, so any process that writes to an existing run (the platform's worker, a
resume) writes as the run was configured to.

Concurrency: a ``RunStore`` owns one connection for its process (re-opened
transparently after a ``fork``) and serialises every statement with a lock,
so trainer threads and metric sinks may share it. Use one ``RunStore`` per
process and run directory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal

from agentrft.config_sections import PrivacyConfig
from agentrft.errors import AgentRFTError
from agentrft.jobs.sqlite_file import SQLiteFile
from agentrft.privacy import Redactor

SCHEMA_VERSION = 2
"""2 added ``trajectories.split`` (validation rollouts are stored beside training samples)."""
DB_NAME = "run.db"

RunStatus = Literal["running", "completed", "completed_no_signal", "failed", "stopped"]
RUN_STATUSES: tuple[str, ...] = ("running", "completed", "completed_no_signal", "failed", "stopped")
"""``completed_no_signal``: the run reached its last step, but no step had a learning signal, so the weights
were never updated (:mod:`agentrft.train.no_signal`); a finished run all the same (checkpoints, evals)."""
FINISHED_STATUSES: tuple[str, ...] = ("completed", "completed_no_signal")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id          TEXT PRIMARY KEY,
    method          TEXT NOT NULL,
    status          TEXT NOT NULL,
    message         TEXT,
    resolved_config TEXT NOT NULL,   -- JSON
    hashes          TEXT NOT NULL,   -- JSON: every hash passed in
    dataset_hash    TEXT,
    grader_hash     TEXT,
    base_model_hash TEXT,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    time    REAL NOT NULL,
    step    INTEGER,
    kind    TEXT NOT NULL,
    message TEXT NOT NULL,
    data    TEXT                     -- JSON or NULL
);
CREATE INDEX IF NOT EXISTS events_kind ON events (kind);
CREATE TABLE IF NOT EXISTS metrics (
    step  INTEGER NOT NULL,
    split TEXT NOT NULL,
    name  TEXT NOT NULL,
    value REAL,                      -- NULL encodes NaN (SQLite has no NaN)
    time  REAL NOT NULL,
    PRIMARY KEY (step, split, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS metrics_name ON metrics (name, split, step);
CREATE TABLE IF NOT EXISTS trajectories (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    step        INTEGER NOT NULL,
    task_id     TEXT,
    trace_id    TEXT UNIQUE,
    group_index INTEGER,
    reward      REAL,
    time        REAL NOT NULL,
    data        TEXT NOT NULL,       -- JSON: Trajectory.to_dict() + grade + reward
    split       TEXT NOT NULL DEFAULT 'train'  -- 'train' (sampled for an update) or 'validation'
);
CREATE INDEX IF NOT EXISTS trajectories_step ON trajectories (step);
CREATE INDEX IF NOT EXISTS trajectories_task ON trajectories (task_id);
CREATE INDEX IF NOT EXISTS trajectories_reward ON trajectories (reward);
CREATE TABLE IF NOT EXISTS checkpoints (
    step    INTEGER PRIMARY KEY,
    path    TEXT NOT NULL,
    metric  REAL,
    is_best INTEGER NOT NULL,
    time    REAL NOT NULL
);
"""


class StoreError(AgentRFTError):
    """The run store cannot be used as asked (schema too new, no run row, ...)."""


class StoreDamagedError(StoreError):
    """``run.db`` cannot be read as a run's record (not a database, malformed, emptied); it was left as it is."""


# -- hashing helpers -------------------------------------------------------------


def hash_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks (datasets and weights can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal data gives equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def hash_json(obj: Any) -> str:
    """Hex sha256 of the canonical JSON of ``obj`` (dict key order does not matter)."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


# -- the store -------------------------------------------------------------------


class RunStore:
    """The SQLite record of one run directory. See the module docstring."""

    def __init__(self, run_dir: str | os.PathLike[str],
                 privacy: PrivacyConfig | Mapping[str, Any] | Redactor | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.run_dir / DB_NAME
        self._db = SQLiteFile(self.db_path, foreign_keys=True)
        with self._db.lock:
            # executescript runs its own statements, so the transaction is spelled out in the
            # script: two processes opening a fresh run_dir at once still create it once.
            try:
                self._db.script(
                    f"BEGIN IMMEDIATE;{_SCHEMA}"
                    f"INSERT INTO schema_version (version) SELECT {SCHEMA_VERSION}"
                    " WHERE NOT EXISTS (SELECT 1 FROM schema_version);COMMIT;")
            except sqlite3.DatabaseError as e:  # not a database, or a malformed one: never written over
                self.close()
                raise StoreDamagedError(f"{self.db_path} is not a readable run store ({e})") from None
            version = self.schema_version
            if version == 1:
                self._migrate_v1()
                version = self.schema_version
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.db_path} has schema version {version}, newer than this agentrft "
                    f"understands ({SCHEMA_VERSION}); upgrade agentrft to read it")
            # after the v1 migration (which adds the column): the dashboard's split filter reads it
            with self._tx() as db:
                db.execute("CREATE INDEX IF NOT EXISTS trajectories_split ON trajectories (split, step)")
        self.privacy = privacy if privacy is not None else self._saved_privacy()

    # -- privacy -------------------------------------------------------------------
    @property
    def privacy(self) -> Redactor:
        """The redactor every write goes through. Set it from a job's ``privacy`` section (or a
        :class:`~agentrft.privacy.Redactor`); ``None`` means the section's defaults (write as is)."""
        return self._redactor

    @privacy.setter
    def privacy(self, privacy: PrivacyConfig | Mapping[str, Any] | Redactor | None) -> None:
        self._redactor = privacy if isinstance(privacy, Redactor) else Redactor.from_config(privacy)

    def _saved_privacy(self) -> Redactor:
        """The ``privacy`` section of the run's saved config (the defaults before :meth:`create_run`); one that
        no longer validates redacts with the default detectors rather than writing text as is."""
        rows = self._query("SELECT resolved_config FROM runs")
        section = json.loads(rows[0][0]).get("privacy") if rows else None
        try:
            return Redactor.from_config(section)
        except ValueError:
            return Redactor("redacted")

    def written(self, obj: Any) -> Any:
        """What the store writes of ``obj`` (a config, an event's data): redacted unless ``privacy.store`` is
        ``full``. A reader comparing its own values with stored ones compares this form."""
        return self._redactor.written(obj)

    def _migrate_v1(self) -> None:
        """v1 -> v2: add ``trajectories.split``; every v1 row was a training sample."""
        with self._tx() as db:
            cols = {r["name"] for r in db.execute("PRAGMA table_info(trajectories)")}
            if "split" not in cols:
                db.execute("ALTER TABLE trajectories ADD COLUMN split TEXT NOT NULL DEFAULT 'train'")
            db.execute("UPDATE schema_version SET version = 2")

    # -- connection: one per process, statements under a lock (jobs/sqlite_file.py) ----------
    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._db.transaction()

    def _query(self, sql: str, params: tuple | list = ()) -> list[sqlite3.Row]:
        return self._db.rows(sql, params)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return int(self._query("SELECT version FROM schema_version")[0][0])

    # -- runs ------------------------------------------------------------------------
    def create_run(self, run_id: str, method: str, resolved_config: Mapping[str, Any],
                   hashes: Mapping[str, str | None], created_at: float | None = None) -> None:
        """Record the run: what it is, its resolved config, and what it was trained on.

        A run directory holds exactly one run; a second ``create_run`` is an error.
        """
        now = time.time()
        created = now if created_at is None else float(created_at)
        with self._tx() as db:
            existing = db.execute("SELECT run_id FROM runs").fetchone()
            if existing is not None:
                raise StoreError(f"{self.run_dir} already holds run {existing[0]!r}")
            db.execute(
                "INSERT INTO runs (run_id, method, status, message, resolved_config, hashes, dataset_hash,"
                " grader_hash, base_model_hash, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, method, "running", None, canonical_json(self.written(dict(resolved_config))),
                 canonical_json(dict(hashes)),
                 hashes.get("dataset"), hashes.get("grader"), hashes.get("base_model"), created, now),
            )

    def get_run(self) -> dict[str, Any] | None:
        """The run row with JSON columns decoded, or None before :meth:`create_run`."""
        rows = self._query("SELECT * FROM runs")
        if not rows:
            return None
        d = dict(rows[0])
        d["resolved_config"] = json.loads(d["resolved_config"])
        d["hashes"] = json.loads(d["hashes"])
        return d

    def update_config(self, resolved_config: Mapping[str, Any]) -> None:
        """Replace the run's resolved config: a resume that was allowed to change it (the differences are
        logged as a ``config_change`` event by the caller)."""
        with self._tx() as db:
            cur = db.execute("UPDATE runs SET resolved_config = ?, updated_at = ?",
                             (canonical_json(self.written(dict(resolved_config))), time.time()))
            if cur.rowcount == 0:
                raise StoreError(f"{self.run_dir} has no run yet; call create_run first")

    def set_status(self, status: RunStatus, message: str | None = None) -> None:
        """Set the run's status; every change is also appended to ``events`` (kind ``status``)
        so the history survives (a failed run that was resumed shows both)."""
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {RUN_STATUSES}, got {status!r}")
        now = time.time()
        message = self.written(message)
        with self._tx() as db:
            cur = db.execute("UPDATE runs SET status = ?, message = ?, updated_at = ?", (status, message, now))
            if cur.rowcount == 0:
                raise StoreError(f"{self.run_dir} has no run yet; call create_run first")
            db.execute("INSERT INTO events (time, step, kind, message, data) VALUES (?,?,?,?,?)",
                       (now, None, "status", f"{status}: {message}" if message else status,
                        canonical_json({"status": status})))

    # -- events ----------------------------------------------------------------------
    def log_event(self, kind: str, message: str, data: Mapping[str, Any] | None = None,
                  step: int | None = None) -> None:
        message, data = self.written(message), None if data is None else self.written(dict(data))
        with self._tx() as db:
            db.execute("INSERT INTO events (time, step, kind, message, data) VALUES (?,?,?,?,?)",
                       (time.time(), step, kind, message, None if data is None else canonical_json(data)))

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Events in the order they were logged: ``{id, time, step, kind, message, data}``."""
        sql, params = "SELECT * FROM events", ()
        if kind is not None:
            sql, params = sql + " WHERE kind = ?", (kind,)
        out = []
        for r in self._query(sql + " ORDER BY id", params):
            d = dict(r)
            d["data"] = None if d["data"] is None else json.loads(d["data"])
            out.append(d)
        return out

    # -- metrics ---------------------------------------------------------------------
    def log_metrics(self, step: int, metrics: Mapping[str, float], split: str = "train") -> None:
        """Write one step's scalar metrics. Re-logging ``(step, split, name)`` replaces the row."""
        now = time.time()
        rows = []
        for name, value in metrics.items():
            if isinstance(value, bool):
                value = float(value)
            if not isinstance(value, (int, float)):
                try:  # numpy / 0-d torch scalars
                    value = float(value)  # type: ignore[arg-type]
                except (TypeError, ValueError):
                    raise TypeError(f"metric {name!r} at step {step} is not a number: {value!r}") from None
            rows.append((int(step), split, str(name), float(value), now))
        with self._tx() as db:
            db.executemany("INSERT OR REPLACE INTO metrics (step, split, name, value, time) VALUES (?,?,?,?,?)", rows)

    def metrics(self, name: str | None = None, split: str | None = None) -> list[dict[str, Any]]:
        """Metric rows ``{step, split, name, value, time}`` ordered by step (NaN comes back as NaN)."""
        where, params = [], []
        if name is not None:
            where.append("name = ?")
            params.append(name)
        if split is not None:
            where.append("split = ?")
            params.append(split)
        sql = "SELECT step, split, name, value, time FROM metrics"
        if where:
            sql += " WHERE " + " AND ".join(where)
        out = []
        for r in self._query(sql + " ORDER BY step, split, name", params):
            d = dict(r)
            d["value"] = math.nan if d["value"] is None else d["value"]
            out.append(d)
        return out

    def metrics_frame(self, split: str | None = "train") -> dict[int, dict[str, float]]:
        """``step -> {name: value}`` for one split; with ``split=None`` names become ``split/name``."""
        frame: dict[int, dict[str, float]] = {}
        for r in self.metrics(split=split):
            key = r["name"] if split is not None else f"{r['split']}/{r['name']}"
            frame.setdefault(r["step"], {})[key] = r["value"]
        return frame

    # -- trajectories ------------------------------------------------------------------
    def log_trajectories(self, step: int, records: list[Mapping[str, Any]], split: str = "train") -> None:
        """Store a step's trajectories: each record is ``Trajectory.to_dict()`` plus
        ``grade`` and ``reward``. ``split``: ``train`` for the samples an update used,
        ``validation`` for the rollouts of the eval at that step. The same ``trace_id``
        logged twice replaces the first. Written as :attr:`privacy` says
        (:meth:`~agentrft.privacy.Redactor.trajectory_record`: redacted or text-free, without token ids)."""
        now = time.time()
        rows = []
        for rec in map(self._redactor.trajectory_record, records):
            reward = rec.get("reward")
            rows.append((int(step), rec.get("task_id"), rec.get("trace_id"), rec.get("group_index"),
                         None if reward is None else float(reward), now, json.dumps(rec, ensure_ascii=False), split))
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO trajectories (step, task_id, trace_id, group_index, reward, time, data, split)"
                " VALUES (?,?,?,?,?,?,?,?)", rows)

    def trajectories(self, step: int | None = None, limit: int | None = None,
                     split: str | None = "train") -> list[dict[str, Any]]:
        """Logged records (as given, plus ``step`` and ``split``) in logging order, optionally one step's,
        at most ``limit``. ``split``: ``train`` (default), ``validation``, or ``None`` for both."""
        sql, params, where = "SELECT step, split, data FROM trajectories", [], []
        if step is not None:
            where.append("step = ?")
            params.append(int(step))
        if split is not None:
            where.append("split = ?")
            params.append(split)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY step, id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        out = []
        for r in self._query(sql, params):
            rec = json.loads(r["data"])
            rec["step"], rec["split"] = r["step"], r["split"]
            out.append(rec)
        return out

    def discard_after(self, step: int) -> None:
        """Forget metrics and trajectories logged after ``step``.

        Call it when resuming from the checkpoint of ``step``: the steps after it
        will be re-run, and their trajectories are new samples (new trace ids),
        so without this they would sit beside the replayed ones.
        """
        with self._tx() as db:
            db.execute("DELETE FROM metrics WHERE step > ?", (int(step),))
            db.execute("DELETE FROM trajectories WHERE step > ?", (int(step),))

    # -- checkpoints ---------------------------------------------------------------------
    def record_checkpoint(self, step: int, path: str | os.PathLike[str], metric: float | None,
                          is_best: bool) -> None:
        """Note a checkpoint written by :func:`agentrft.jobs.checkpoint.save_checkpoint` (one row per step)."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO checkpoints (step, path, metric, is_best, time) VALUES (?,?,?,?,?)",
                       (int(step), str(path), None if metric is None else float(metric), int(bool(is_best)),
                        time.time()))

    def checkpoints(self) -> list[dict[str, Any]]:
        """Recorded checkpoints by step; ``exists`` says whether retention has since deleted the folder."""
        out = []
        for r in self._query("SELECT step, path, metric, is_best, time FROM checkpoints ORDER BY step"):
            d = dict(r)
            d["is_best"] = bool(d["is_best"])
            d["exists"] = Path(d["path"]).is_dir()
            out.append(d)
        return out
