"""Read-only queries over one run's ``run.db`` for the dashboard: summaries, metric series, pages of trajectories.

Why not :class:`~agentrft.jobs.store.RunStore`: opening one starts a write transaction (it creates the schema
if missing), and a dashboard polls every run every two seconds while trainers write. Here the file is opened
with SQLite's ``mode=ro`` URI and ``query_only``: the dashboard can never change a run, and in WAL mode its
reads never block the trainer (nor the trainer its reads).

Every list is paginated in SQL (``LIMIT``/``OFFSET`` over the ``step``/``reward``/``id`` indexes the store
creates) and a trajectory page returns summaries only; the full record (tokens, logprobs) is read for one
trajectory at a time. Filters on a trajectory's errors look inside its JSON, so they first test for the quoted
value as plain text (``instr``, a byte scan) and parse only the records that contain it.

Shapes: metric series come back aligned for charting, ``{split: {"steps": [s...], "series": {name: [v...]}}}``
with ``None`` where a step has no value (or a NaN); trajectory summaries are flat dicts (see
:func:`trajectory_summary`).
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from agentrft.errors import AgentRFTError
from agentrft.graders.base import ERROR_FLAGS
from agentrft.jobs.inspect import _total_steps, json_ready
from agentrft.jobs.store import DB_NAME
from agentrft.types import ToolErrorKind

ROLLOUT_ERROR_KINDS: tuple[str, ...] = ("env_setup", "sampler", "infrastructure", "env_close")
"""``TrajectoryError.kind`` values the episode loop records (:mod:`agentrft.rollout.episode`)."""

MAX_PAGE = 200
SORT_COLUMNS = {"id": "id", "step": "step", "reward": "reward"}


class RunUnreadable(AgentRFTError):
    """A run's ``run.db`` cannot be read (missing, not a database, locked past the timeout)."""


@contextmanager
def reading(run_dir: Path, timeout_s: float = 5.0) -> Iterator[sqlite3.Connection]:
    """A read-only connection to ``run_dir/run.db`` for one request."""
    uri = f"file:{quote(str((Path(run_dir) / DB_NAME).resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=timeout_s, check_same_thread=False)
    except sqlite3.Error as e:
        raise RunUnreadable(f"cannot open the run's store: {e}") from None
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("PRAGMA query_only = ON")
        yield conn
    except sqlite3.Error as e:
        raise RunUnreadable(f"cannot read the run's store: {e}") from None
    finally:
        conn.close()


def _number(value: float | None) -> float | None:
    """A stored REAL as strict JSON: NaN (stored as NULL) and infinities become None."""
    return None if value is None or not math.isfinite(value) else value


# -- runs ---------------------------------------------------------------------------------------------------


def run_row(conn: sqlite3.Connection) -> dict[str, Any] | None:
    """The ``runs`` row with its JSON columns decoded, or None before the run was created."""
    row = conn.execute("SELECT * FROM runs").fetchone()
    if row is None:
        return None
    d = dict(row)
    d["resolved_config"] = json.loads(d["resolved_config"])
    d["hashes"] = json.loads(d["hashes"])
    return d


def progress(conn: sqlite3.Connection, run: dict[str, Any]) -> dict[str, Any]:
    """Where the run is: latest step with training metrics, planned steps, latest training reward."""
    latest = conn.execute("SELECT MAX(step) FROM metrics WHERE split = 'train'").fetchone()[0] or 0
    reward = conn.execute("SELECT step, value FROM metrics WHERE name = 'reward_mean' AND split = 'train'"
                          " ORDER BY step DESC LIMIT 1").fetchone()
    val = conn.execute("SELECT step, value FROM metrics WHERE name = 'reward_mean' AND split = 'validation'"
                       " ORDER BY step DESC LIMIT 1").fetchone()
    return {"latest_step": latest, "total_steps": _total_steps(run["resolved_config"], latest, run["status"]),
            "latest_reward": None if reward is None else _number(reward["value"]),
            "latest_val_reward": None if val is None else _number(val["value"]),
            "updated_at": run["updated_at"]}


def run_lineage(run: dict[str, Any]) -> dict[str, Any]:
    """What the run was trained on: the dataset, grader and base-model hashes and every hash recorded."""
    return {"dataset": run["dataset_hash"], "grader": run["grader_hash"], "base_model": run["base_model_hash"],
            "all": run["hashes"]}


def checkpoints(conn: sqlite3.Connection, run_dir: Path) -> list[dict[str, Any]]:
    """Recorded checkpoints by step; ``exists`` says whether retention has since deleted the folder; ``path`` is
    relative to the run directory when inside it."""
    out = []
    for r in conn.execute("SELECT step, path, metric, is_best, time FROM checkpoints ORDER BY step"):
        path = Path(r["path"])
        try:
            shown = str(path.relative_to(run_dir))
        except ValueError:
            shown = str(path)
        out.append({"step": r["step"], "path": shown, "metric": _number(r["metric"]), "is_best": bool(r["is_best"]),
                    "exists": path.is_dir(), "time": r["time"]})
    return out


def events(conn: sqlite3.Connection, limit: int, offset: int, kind: str | None = None) -> dict[str, Any]:
    """A page of events, newest first: ``{"data": [{id, time, step, kind, message, data}], "total"}``."""
    where, params = ("WHERE kind = ?", [kind]) if kind else ("", [])
    total = conn.execute(f"SELECT COUNT(*) FROM events {where}", params).fetchone()[0]
    rows = conn.execute(f"SELECT id, time, step, kind, message, data FROM events {where}"
                        " ORDER BY id DESC LIMIT ? OFFSET ?", [*params, limit, offset]).fetchall()
    data = [{**dict(r), "data": None if r["data"] is None else json.loads(r["data"])} for r in rows]
    return {"data": json_ready(data), "total": total, "limit": limit, "offset": offset}


# -- metrics ------------------------------------------------------------------------------------------------


def metric_series(conn: sqlite3.Connection, since_step: int = 0) -> dict[str, Any]:
    """Every metric at steps ``>= since_step``, per split, aligned on the split's steps.

    Inclusive on purpose: a step's validation row lands after its training row (the eval runs after the
    step), so a client that polls with the last step it has re-reads that step and merges it.
    """
    by_split: dict[str, dict[int, dict[str, float | None]]] = {}
    for r in conn.execute("SELECT step, split, name, value FROM metrics WHERE step >= ? ORDER BY step",
                          (int(since_step),)):
        by_split.setdefault(r["split"], {}).setdefault(r["step"], {})[r["name"]] = _number(r["value"])
    out: dict[str, Any] = {}
    for split, frame in by_split.items():
        steps = sorted(frame)
        names = sorted({n for row in frame.values() for n in row})
        out[split] = {"steps": steps, "series": {n: [frame[s].get(n) for s in steps] for n in names}}
    return {"since_step": since_step, "splits": out}


# -- trajectories -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrajectoryFilter:
    """What a trajectory page may be narrowed to; every value is bound as an SQL parameter, never spliced."""

    split: str | None = None
    step: int | None = None
    step_min: int | None = None
    step_max: int | None = None
    reward_min: float | None = None
    reward_max: float | None = None
    task_id: str | None = None
    error: str | None = None
    """``any``; ``tool`` or ``tool:<ToolErrorKind>``; ``rollout`` or ``rollout:<kind>`` (sampler, environment
    and transport failures); ``grader`` or ``grader:<flag>`` (a grade's error flag)."""


def error_filters() -> list[str]:
    """The error filters a client can offer (``TrajectoryFilter.error``)."""
    return (["any", "tool", *(f"tool:{k.value}" for k in ToolErrorKind), "rollout",
             *(f"rollout:{k}" for k in ROLLOUT_ERROR_KINDS), "grader", *(f"grader:{f}" for f in ERROR_FLAGS)])


# Each clause starts with a byte scan for text the match must contain, so only those records' JSON is parsed.
_TOOL_ERROR = ("(instr(data, '\"kind\"') > 0 AND EXISTS (SELECT 1 FROM json_each(data, '$.tool_calls') c"
               " WHERE json_type(c.value, '$.error') = 'object'))")
_TOOL_ERROR_KIND = ("(instr(data, ?) > 0 AND EXISTS (SELECT 1 FROM json_each(data, '$.tool_calls') c"
                    " WHERE json_extract(c.value, '$.error.kind') = ?))")
_ROLLOUT_ERROR = "(instr(data, '\"kind\"') > 0 AND json_array_length(data, '$.errors') > 0)"
_ROLLOUT_ERROR_KIND = ("(instr(data, ?) > 0 AND EXISTS (SELECT 1 FROM json_each(data, '$.errors') e"
                       " WHERE json_extract(e.value, '$.kind') = ?))")
_GRADER_ERROR = ("(instr(data, 'true') > 0 AND EXISTS (SELECT 1 FROM json_each(data, '$.grade.metadata.errors') g"
                 " WHERE g.type = 'true'))")
_GRADER_ERROR_FLAG = ("(instr(data, 'true') > 0 AND EXISTS (SELECT 1 FROM json_each(data, '$.grade.metadata.errors') g"
                      " WHERE g.key = ? AND g.type = 'true'))")


def _error_clause(error: str) -> tuple[str, list[Any]]:
    """SQL for ``TrajectoryFilter.error``; ValueError names an unknown filter."""
    group, _, value = error.partition(":")
    quoted = json.dumps(value)  # how the value appears inside the record's JSON
    if error == "any":
        return f"({_TOOL_ERROR} OR {_ROLLOUT_ERROR} OR {_GRADER_ERROR})", []
    if group == "tool":
        if not value:
            return _TOOL_ERROR, []
        if value not in {k.value for k in ToolErrorKind}:
            raise ValueError(f"unknown tool error kind {value!r}; one of: {', '.join(k.value for k in ToolErrorKind)}")
        return _TOOL_ERROR_KIND, [quoted, value]
    if group == "rollout":
        return (_ROLLOUT_ERROR_KIND, [quoted, value]) if value else (_ROLLOUT_ERROR, [])
    if group == "grader":
        return (_GRADER_ERROR_FLAG, [value]) if value else (_GRADER_ERROR, [])
    raise ValueError(f"unknown error filter {error!r}: use any, tool[:KIND], rollout[:KIND] or grader[:FLAG]")


def _where(f: TrajectoryFilter, has_split: bool) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for sql, value in (("step = ?", f.step), ("step >= ?", f.step_min), ("step <= ?", f.step_max),
                       ("reward >= ?", f.reward_min), ("reward <= ?", f.reward_max), ("task_id = ?", f.task_id)):
        if value is not None:
            clauses.append(sql)
            params.append(value)
    if f.split is not None:
        if has_split:
            clauses.append("split = ?")
            params.append(f.split)
        elif f.split != "train":  # a schema-v1 store: every row is a training sample
            clauses.append("0")
    if f.error:
        sql, p = _error_clause(f.error)
        clauses.append(sql)
        params.extend(p)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


def _has_split(conn: sqlite3.Connection) -> bool:
    return any(r["name"] == "split" for r in conn.execute("PRAGMA table_info(trajectories)"))


def trajectory_page(conn: sqlite3.Connection, f: TrajectoryFilter, sort: str = "id", descending: bool = True,
                    limit: int = 50, offset: int = 0, count: bool | None = None) -> dict[str, Any]:
    """One page of trajectory summaries matching ``f``: ``{"data", "total", "has_more", "limit", "offset"}``.

    ``total`` counts every match; by default (``count=None``) only when that is cheap, i.e. without an error
    filter: counting those reads every record's JSON (~0.3 s per 200 MB of trajectories), while the page itself
    stops at the first ``limit + 1`` matches. Then ``total`` is None unless ``count=True``; ``has_more`` is exact.
    """
    if sort not in SORT_COLUMNS:
        raise ValueError(f"sort must be one of {', '.join(SORT_COLUMNS)}, got {sort!r}")
    limit = max(1, min(int(limit), MAX_PAGE))
    has_split = _has_split(conn)
    where, params = _where(f, has_split)
    direction = "DESC" if descending else "ASC"
    order = f"{SORT_COLUMNS[sort]} {direction}" + ("" if sort == "id" else f", id {direction}")
    split = "split" if has_split else "'train' AS split"
    rows = conn.execute(f"SELECT id, step, {split}, reward, data FROM trajectories {where}"
                        f" ORDER BY {order} LIMIT ? OFFSET ?", [*params, limit + 1, offset]).fetchall()
    has_more = len(rows) > limit
    total = None
    if count or (count is None and not f.error):
        total = conn.execute(f"SELECT COUNT(*) FROM trajectories {where}", params).fetchone()[0]
    data = [trajectory_summary(r["id"], r["step"], r["split"], r["reward"], json.loads(r["data"])) for r in rows[:limit]]
    return {"data": data, "total": total, "has_more": has_more, "limit": limit, "offset": offset}


def error_labels(record: dict[str, Any]) -> list[str]:
    """The failures recorded on a trajectory, as the error filters name them (``tool:timeout``, ...)."""
    labels = [f"tool:{c['error']['kind']}" for c in record.get("tool_calls") or [] if c.get("error")]
    labels += [f"rollout:{e.get('kind')}" for e in record.get("errors") or []]
    flags = ((record.get("grade") or {}).get("metadata") or {}).get("errors") or {}
    labels += [f"grader:{k}" for k, v in flags.items() if v]
    return sorted(set(labels))


def trajectory_summary(traj_id: int, step: int, split: str, reward: float | None,
                       record: dict[str, Any]) -> dict[str, Any]:
    """What a trajectory list shows of one record: counts, never the tokens or the messages."""
    calls = record.get("tool_calls") or []
    kinds = record.get("token_kinds") or []
    advantage = record.get("advantage")
    return {
        "id": traj_id, "step": step, "split": split, "task_id": record.get("task_id"),
        "group_index": record.get("group_index"), "reward": _number(reward),
        "tool_calls": len(calls), "tool_errors": sum(1 for c in calls if c.get("error")),
        "errors": error_labels(record), "tokens": len(kinds), "sampled_tokens": sum(1 for k in kinds if k == "sampled"),
        "turns": record.get("turns"), "stop_reason": record.get("stop_reason"),
        "advantage": json_ready(advantage),
    }


def trajectory_record(conn: sqlite3.Connection, traj_id: int) -> dict[str, Any] | None:
    """One stored record (``Trajectory.to_dict()`` + grade, reward, advantage) with its row's id, step, split."""
    split = "split" if _has_split(conn) else "'train' AS split"
    row = conn.execute(f"SELECT id, step, {split}, reward, data FROM trajectories WHERE id = ?",
                       (int(traj_id),)).fetchone()
    if row is None:
        return None
    record = json.loads(row["data"])
    record.update(id=row["id"], step=row["step"], split=row["split"], reward=_number(row["reward"]))
    return record


def token_advantages(kinds: list[str], advantage: float | list[float] | None) -> list[float | None]:
    """The advantage each token was trained with: the trajectory's on every sampled token, or with per-turn
    credit the value of the assistant turn the token belongs to (``sampled_turns``); None elsewhere."""
    if advantage is None:
        return [None] * len(kinds)
    if not isinstance(advantage, list):
        return [float(advantage) if k == "sampled" else None for k in kinds]
    from agentrft.algo.batch import sampled_turns
    from agentrft.types import Trajectory

    turns = sampled_turns(Trajectory(task_id="", messages=[], token_kinds=list(kinds)))
    return [advantage[t] if 0 <= t < len(advantage) else None for t in turns]
