"""Which runs a server shows: the :class:`RunIndex` protocol the dashboard reads, and a directory-backed one.

The dashboard never walks the file system or the job table itself: it asks ``request.app.state.run_index``
for the runs it may show and for one run's directory by id. Two indexes implement it:

* :class:`DirectoryRunIndex` — every run directory (a folder holding ``run.db``) directly under a root,
  id = the folder's name (``agentrft dashboard RUNS_DIR``);
* the platform's job table (:mod:`agentrft.platform.jobs`), id = the fine-tuning job id, so a job's page
  and its API object share one name.

An id comes from the client: an index resolves it only to a run it listed, never to a path built from it.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agentrft.jobs.store import DB_NAME


@dataclass(frozen=True)
class RunRef:
    """One run a server may show."""

    id: str
    name: str
    """What a person reads (a job's suffix or model name; the folder's name)."""
    run_dir: Path
    status: str
    """The run's status (``running``, ``completed``, ...) or, for a job, the job's (``queued``, ``succeeded``, ...)."""
    created_at: float
    method: str | None = None
    model: str | None = None


class RunIndex(Protocol):
    def list_runs(self) -> list[RunRef]:
        """Every run this server shows, newest first."""
        ...

    def get_run(self, run_id: str) -> RunRef | None:
        """The run with this id, or None when there is none (never a path built from the id)."""
        ...


class DirectoryRunIndex:
    """The run directories directly under ``root`` (each a folder with ``run.db``)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def list_runs(self) -> list[RunRef]:
        refs = [ref for d in self._dirs() if (ref := _describe(d)) is not None]
        return sorted(refs, key=lambda r: r.created_at, reverse=True)

    def get_run(self, run_id: str) -> RunRef | None:
        for d in self._dirs():
            if d.name == run_id:
                return _describe(d)
        return None

    def _dirs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [d for d in self.root.iterdir() if d.is_dir() and (d / DB_NAME).is_file()]


def _describe(run_dir: Path) -> RunRef | None:
    """A run directory as a :class:`RunRef`; None when its store has no run row or cannot be read. Read-only:
    listing runs never writes (or creates the schema of) a store a trainer is writing."""
    try:
        conn = sqlite3.connect(f"file:{run_dir / DB_NAME}?mode=ro", uri=True, timeout=5.0)
        try:
            row = conn.execute("SELECT status, method, created_at, resolved_config FROM runs").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    if row is None:
        return None
    status, method, created_at, config = row
    try:
        model = json.loads(config).get("model")
    except (ValueError, AttributeError):
        model = None
    return RunRef(id=run_dir.name, name=run_dir.name, run_dir=run_dir, status=status, created_at=created_at,
                  method=method, model=model)
