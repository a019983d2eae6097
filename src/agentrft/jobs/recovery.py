"""Opening a run's store to resume it: a damaged ``run.db`` is detected, never silently replaced.

The store (``run.db``) holds a run's record: its config, events, metrics and
trajectories. The checkpoints hold what training needs to continue. Without
this check, a ``run.db`` that was emptied (truncated, its WAL deleted) opened
as a fresh store: the resumed run carried on with its history of earlier
steps gone and nothing said so. Now :func:`open_store_for_resume` finds out
first and refuses, naming the file; ``rebuild=True`` (``agentrft train ...
--resume --rebuild-store``) is the explicit recovery: the damaged file is kept
beside it as ``run.db.damaged-<time>``, a new store records the checkpoints on
disk and a ``store_rebuilt`` event says what was lost, and the run continues
from its latest checkpoint.

A store is damaged when the run has checkpoints but ``run.db`` is missing,
empty or holds no run record, or when ``run.db`` is not a SQLite database or
fails SQLite's ``quick_check``.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from agentrft.jobs.checkpoint import checkpoint_steps, load_checkpoint
from agentrft.jobs.store import DB_NAME, RunStore, StoreDamagedError

__all__ = ["open_store_for_resume", "store_problem"]


def store_problem(run_dir: Path, steps: list[int]) -> str | None:
    """What is wrong with ``run_dir``'s store, given the run's checkpoint ``steps``; None when it is usable."""
    db = run_dir / DB_NAME
    have = f"checkpoints/ holds steps {', '.join(map(str, steps))}"
    if not db.exists():
        return f"{db} is missing but {have}" if steps else None
    if db.stat().st_size == 0 and not Path(f"{db}-wal").exists():
        return f"{db} is empty but {have}" if steps else None
    try:
        conn = sqlite3.connect(db, timeout=30.0)
        try:
            check = [row[0] for row in conn.execute("PRAGMA quick_check")]
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            runs = conn.execute("SELECT count(*) FROM runs").fetchone()[0] if "runs" in tables else 0
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        return f"{db} is not a readable SQLite database ({e})"
    if check != ["ok"]:
        return f"{db} fails SQLite's integrity check ({'; '.join(check[:3])})"
    if not runs and steps:
        return f"{db} holds no run record but {have}"
    return None


def open_store_for_resume(run_dir: Path, *, rebuild: bool = False) -> tuple[RunStore, str | None]:
    """The run's store, checked; with ``rebuild`` a damaged one is set aside and a new one records the
    checkpoints. Returns the store and, when it was rebuilt, what happened (for the run's log)."""
    steps = checkpoint_steps(run_dir)
    problem = store_problem(run_dir, steps)
    if problem is None:
        return RunStore(run_dir), None
    if not rebuild:
        raise StoreDamagedError(
            f"cannot resume: {problem}. Its metrics, events and trajectories cannot be read, and nothing was "
            "changed. To continue from the checkpoints anyway, add --rebuild-store (run_job(..., "
            "rebuild_store=True) from Python): the damaged file is kept beside it, a new store records the checkpoints, and the history "
            "of the steps before them is lost.")
    db = run_dir / DB_NAME
    kept = db.with_name(f"{DB_NAME}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    for suffix in ("", "-wal", "-shm"):
        part = Path(f"{db}{suffix}")
        if part.exists():
            part.rename(Path(f"{kept}{suffix}"))
    store = RunStore(run_dir)
    for step in steps:
        info = load_checkpoint(run_dir, step, verify_hashes=False)
        store.record_checkpoint(step, info.path, info.metric, is_best=False)
    where = f"the damaged file is kept as {kept.name}" if kept.exists() else "there was no file to keep"
    note = (f"store rebuilt from the checkpoints of steps {', '.join(map(str, steps))} ({problem}); {where}; "
            "the metrics, events and trajectories recorded before are lost")
    return store, note
