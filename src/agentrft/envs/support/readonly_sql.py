"""The guarded SQL runner behind the support desk's ``sql_query`` tool.

What: :class:`ReadOnlySql` runs one model-written statement at a time on a
read-only connection to a rollout's database and returns the result as JSON
text, or raises :class:`~agentrft.tools.base.ToolFailure` with a typed kind.

Two kinds of guard, because a query can do harm in two ways:

* **Writes** -- three independent locks: the connection is opened with
  ``mode=ro``, has ``PRAGMA query_only``, and an authorizer allows only reads
  (SELECT, READ, RECURSIVE, whitelisted functions, schema PRAGMAs). A refusal
  is ``GUARDRAIL``.
* **Resources** -- a read can still build huge values or run for ever
  (``printf('%.*c', 900000000, 'x')``, a recursive CTE that doubles a string, a
  cross join). :class:`SqlLimits` bounds them:

  - every string or blob, and every row, is at most ``max_value_bytes``
    (``SQLITE_LIMIT_LENGTH``), results have at most ``max_columns`` columns and
    the query text at most ``max_query_chars``; the prepared program, the
    expression depth, compound SELECTs, function arguments and LIKE/GLOB
    patterns are capped as well (:data:`_FIXED_LIMITS`). With values and the
    program bounded, SQLite's own memory for a statement is bounded too: its
    page cache (``cache_kib``) and sort buffers spill to temporary files,
    which SQLite deletes when the statement ends;
  - a watchdog calls ``Connection.interrupt()`` at the deadline
    (``time_limit_s``). SQLite checks the interrupt flag at every jump of its
    program, but not inside one function call or along a straight run of
    calls, and some allowed functions cost far more than the value they
    return: ``printf``'s ``%c`` repeats a character ``precision`` times one
    at a time even past the length limit, ``instr``/``replace``/``like``/
    ``glob`` are quadratic in their arguments and ``trim(x, set)`` costs
    ``len(x) * len(set)``. Those functions are replaced on this connection
    by wrappers (:data:`GUARDED_FUNCTIONS`) that check the deadline before
    each call, refuse a ``printf`` width or ``%c`` precision over
    ``max_value_bytes`` and a ``trim`` over :data:`_TRIM_MAX_PAIRS`, and
    then run SQLite's own implementation on a private in-memory connection
    with the same limits: results are exactly SQLite's, and no call outlives
    the deadline by more than one call on bounded values (about 0.1 s);
  - the reply holds at most ``max_rows`` rows and about ``max_result_chars``
    characters (longer cells are cut, with a marker); rows are fetched one
    at a time, so the process never holds more than one row beyond that.

  Over the deadline is ``TIMEOUT``; a value, query or program over its limit
  is ``TOOL_ERROR``, with a message that says which limit and what to do.

Concurrency: the caller serialises calls (one lock per environment); the
connections are opened with ``check_same_thread=False`` because the calls of
one assistant turn run in worker threads.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from agentrft.tools.base import ToolFailure
from agentrft.types import ToolErrorKind

__all__ = ["ALLOWED_FUNCTIONS", "GUARDED_FUNCTIONS", "READONLY_PRAGMAS", "ReadOnlySql", "SqlLimits"]

ALLOWED_FUNCTIONS = frozenset({
    "abs", "avg", "coalesce", "count", "date", "datetime", "group_concat", "ifnull", "iif", "instr",
    "julianday", "length", "like", "glob", "lower", "ltrim", "max", "min", "nullif", "printf", "format",
    "replace", "round", "rtrim", "strftime", "substr", "substring", "sum", "total", "trim", "typeof", "upper",
})
"""SQL functions ``sql_query`` may call (no ``randomblob``/``zeroblob`` memory bombs, no ``load_extension``)."""

GUARDED_FUNCTIONS: dict[str, tuple[int, ...]] = {
    "printf": (-1,), "format": (-1,), "instr": (2,), "replace": (3,), "like": (2, 3), "glob": (2,),
    "trim": (2,), "ltrim": (2,), "rtrim": (2,),
}
"""Allowed functions whose one call can outlast its result's size, and their arities: each call checks the deadline."""

READONLY_PRAGMAS = frozenset({"table_info", "table_xinfo", "table_list", "index_list", "index_info",
                              "foreign_key_list"})
"""Schema-inspection PRAGMAs that ``sql_query`` allows; every other PRAGMA is denied."""

_FIXED_LIMITS = {
    "EXPR_DEPTH": 100, "COMPOUND_SELECT": 20, "FUNCTION_ARG": 32, "VDBE_OP": 10_000, "ATTACHED": 0,
    "LIKE_PATTERN_LENGTH": 100, "VARIABLE_NUMBER": 16, "TRIGGER_DEPTH": 1, "WORKER_THREADS": 0,
}
"""Connection limits (``SQLITE_LIMIT_*``) that no support query comes near; they bound the prepared program."""

_READ_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE})
_AUTHORIZER_ACTIONS = (
    "ALTER_TABLE", "ANALYZE", "ATTACH", "CREATE_INDEX", "CREATE_TABLE", "CREATE_TEMP_INDEX", "CREATE_TEMP_TABLE",
    "CREATE_TEMP_TRIGGER", "CREATE_TEMP_VIEW", "CREATE_TRIGGER", "CREATE_VIEW", "CREATE_VTABLE", "DELETE",
    "DETACH", "DROP_INDEX", "DROP_TABLE", "DROP_TEMP_INDEX", "DROP_TEMP_TABLE", "DROP_TEMP_TRIGGER",
    "DROP_TEMP_VIEW", "DROP_TRIGGER", "DROP_VIEW", "DROP_VTABLE", "FUNCTION", "INSERT", "PRAGMA", "READ",
    "RECURSIVE", "REINDEX", "SAVEPOINT", "SELECT", "TRANSACTION", "UPDATE",
)
# authorizer action code -> "DROP TABLE" etc., for the refusal message
_ACTION_NAMES = {
    getattr(sqlite3, f"SQLITE_{name}"): name.replace("_", " ") for name in _AUTHORIZER_ACTIONS
    if hasattr(sqlite3, f"SQLITE_{name}")
}


@dataclass(frozen=True)
class SqlLimits:
    """What one ``sql_query`` call may use. The defaults are far above what a support query needs."""

    time_limit_s: float = 1.0
    """Wall time of one query; past it the query is interrupted (``TIMEOUT``)."""
    max_rows: int = 50
    """Rows in the reply; the rest are dropped and ``truncated`` says so."""
    max_result_chars: int = 16_000
    """Characters of the reply's rows, about; cells are cut to share it and rows past it are dropped."""
    max_value_bytes: int = 100_000
    """Longest string, blob or row a query may build (``SQLITE_LIMIT_LENGTH``)."""
    max_query_chars: int = 4_000
    """Longest query text (``SQLITE_LIMIT_SQL_LENGTH``)."""
    max_columns: int = 64
    """Most result columns (``SQLITE_LIMIT_COLUMN``)."""
    cache_kib: int = 1_024
    """SQLite page cache of the connection, in KiB; sorts and temporary tables past it spill to disk."""

    def __post_init__(self) -> None:
        if not self.time_limit_s > 0:
            raise ValueError(f"time_limit_s must be > 0, got {self.time_limit_s}")
        for name in ("max_rows", "max_result_chars", "max_value_bytes", "max_query_chars", "max_columns", "cache_kib"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class _Abort(Exception):
    """Raised inside a guarded function to stop the query; the runner's ``_abort`` says why."""


class ReadOnlySql:
    """One rollout's read-only SQL runner (see the module docstring for the guards)."""

    def __init__(self, db_path: Path, limits: SqlLimits):
        self.limits = limits
        self._denied: list[str] = []  # why the authorizer refused the current query (it appends)
        self._deadline = 0.0
        self._abort: str | None = None  # why a guarded function stopped the query: timeout, too_big, refused
        self._abort_message = ""
        self._conn = _limited(sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True, check_same_thread=False), limits)
        self._conn.execute("PRAGMA query_only = ON")
        self._conn.execute(f"PRAGMA cache_size = -{limits.cache_kib}")
        self._builtin = _limited(sqlite3.connect(":memory:", check_same_thread=False), limits)
        for name, arities in GUARDED_FUNCTIONS.items():
            for arity in arities:
                self._conn.create_function(name, arity, self._guarded(name, arity), deterministic=True)
        self._conn.set_authorizer(_read_only_authorizer(self._denied))

    def close(self) -> None:
        self._conn.close()
        self._builtin.close()

    def query(self, text: str) -> str:
        """Run one statement; the rows as ``{"columns", "rows"[, "truncated"]}`` JSON, or a ``ToolFailure``."""
        limits = self.limits
        if len(text) > limits.max_query_chars:
            raise ToolFailure(
                ToolErrorKind.TOOL_ERROR,
                f"the query is {len(text)} characters long; the limit is {limits.max_query_chars}",
            )
        self._denied.clear()
        self._abort, self._abort_message = None, ""
        self._deadline = time.monotonic() + limits.time_limit_s
        watchdog = _Watchdog(limits.time_limit_s, (self._conn, self._builtin))
        cursor = None
        try:
            cursor = self._conn.execute(text)
            columns = [d[0] for d in cursor.description or ()]
            rows, truncated = self._fetch(cursor, columns)
        except (sqlite3.Error, MemoryError) as e:
            raise self._failure(e, watchdog.fired) from None
        finally:
            watchdog.stop()
            if cursor is not None:
                cursor.close()
            if self._conn.in_transaction:  # a read left open would keep a shared lock
                self._conn.rollback()
        out: dict[str, Any] = {"columns": columns, "rows": rows}
        if truncated:
            out["truncated"] = truncated
        return json.dumps(out, ensure_ascii=False)

    # -- internals -----------------------------------------------------------------------
    def _fetch(self, cursor: sqlite3.Cursor, columns: list[str]) -> tuple[list[list[Any]], str]:
        """Rows one at a time until ``max_rows`` or ``max_result_chars``; the second value says what was cut."""
        limits = self.limits
        cell_chars = max(64, limits.max_result_chars // max(1, len(columns)))
        rows: list[list[Any]] = []
        used = 0
        while (row := cursor.fetchone()) is not None:
            if time.monotonic() > self._deadline:
                raise sqlite3.OperationalError("interrupted")
            if len(rows) == limits.max_rows:
                return rows, f"only the first {limits.max_rows} rows are shown"
            cells = [_cell(v, cell_chars) for v in row]
            size = len(json.dumps(cells, ensure_ascii=False))
            if rows and used + size > limits.max_result_chars:
                return rows, f"only the first {len(rows)} rows are shown (replies are capped at about " \
                             f"{limits.max_result_chars} characters)"
            rows.append(cells)
            used += size
        return rows, ""

    def _guarded(self, name: str, arity: int) -> Callable[..., Any]:
        fixed_sql = f"SELECT {name}({', '.join('?' * arity)})" if arity >= 0 else None
        precheck = _PRECHECKS.get(name)

        def call(*args: Any) -> Any:
            if time.monotonic() > self._deadline:
                self._abort = "timeout"
                raise _Abort()
            problem = precheck(args, self.limits.max_value_bytes) if precheck else None
            if problem is not None:
                self._abort, self._abort_message = "refused", f"{name}: {problem}"
                raise _Abort()
            sql = fixed_sql or f"SELECT {name}({', '.join('?' * len(args))})"
            try:
                return self._builtin.execute(sql, args).fetchone()[0]
            except sqlite3.Error as e:
                if "too big" in str(e):
                    self._abort = "too_big"
                elif time.monotonic() > self._deadline:
                    self._abort = "timeout"
                else:
                    self._abort, self._abort_message = "refused", str(e)
                raise _Abort() from None

        return call

    def _failure(self, error: BaseException, fired: bool) -> ToolFailure:
        limits = self.limits
        if self._denied:
            return ToolFailure(
                ToolErrorKind.GUARDRAIL,
                f"sql_query is read-only and refused {self._denied[0]}; only SELECT statements "
                f"(and schema PRAGMAs: {', '.join(sorted(READONLY_PRAGMAS))}) may run",
            )
        message = str(error)
        if self._abort == "timeout" or fired or ("interrupted" in message and time.monotonic() > self._deadline):
            return ToolFailure(
                ToolErrorKind.TIMEOUT,
                f"query aborted: it ran longer than the {limits.time_limit_s:g}s limit; "
                "add WHERE conditions or a LIMIT",
            )
        if self._abort == "too_big" or "too big" in message:
            return ToolFailure(
                ToolErrorKind.TOOL_ERROR,
                f"query aborted: a value or row would be longer than the {limits.max_value_bytes}-byte limit",
            )
        if self._abort == "refused":
            return ToolFailure(ToolErrorKind.TOOL_ERROR, f"query aborted: {self._abort_message}")
        if isinstance(error, MemoryError):
            return ToolFailure(
                ToolErrorKind.TOOL_ERROR,
                "query refused: it is too complex (its program or memory is over the limit); simplify it",
            )
        if "query string is too large" in message:
            return ToolFailure(
                ToolErrorKind.TOOL_ERROR, f"the query is longer than {limits.max_query_chars} characters"
            )
        return ToolFailure(ToolErrorKind.TOOL_ERROR, f"SQL error: {error}")


class _Watchdog:
    """Interrupts ``connections`` once ``seconds`` have passed, unless stopped first."""

    def __init__(self, seconds: float, connections: tuple[sqlite3.Connection, ...]):
        self.fired = False
        self._stopped = False
        self._lock = threading.Lock()
        self._connections = connections
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self.fired = True
            for conn in self._connections:
                conn.interrupt()

    def stop(self) -> None:
        with self._lock:  # after this, no interrupt can reach the next query
            self._stopped = True
        self._timer.cancel()


def _limited(conn: sqlite3.Connection, limits: SqlLimits) -> sqlite3.Connection:
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, limits.max_value_bytes)
    conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, limits.max_query_chars)
    conn.setlimit(sqlite3.SQLITE_LIMIT_COLUMN, limits.max_columns)
    for name, value in _FIXED_LIMITS.items():
        conn.setlimit(getattr(sqlite3, f"SQLITE_LIMIT_{name}"), value)
    return conn


def _cell(value: Any, max_chars: int) -> Any:
    """A result value as JSON: blobs as ``x'..'`` hex literals; long text cut with a marker."""
    if isinstance(value, bytes):
        value = f"x'{value[: max_chars // 2].hex()}'" + ("..." if len(value) > max_chars // 2 else "")
    if isinstance(value, str) and len(value) > max_chars:
        return f"{value[:max_chars]}[truncated: {len(value) - max_chars} characters omitted]"
    return value


# printf conversions as SQLite parses them: flags, width (digits or *), precision (. digits or .*), l/ll, type
_PRINTF_SPEC = re.compile(r"%([-+ #!0,]*)(\*|\d+)?(?:\.(\*|\d*))?(?:ll?)?(.?)", re.S)
_LEADING_NUMBER = re.compile(r"\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _printf_problem(args: tuple[Any, ...], max_bytes: int) -> str | None:
    """Why a ``printf``/``format`` call would pad or repeat past ``max_bytes``, or None.

    SQLite's ``%c`` repeats its character ``precision`` times one character
    at a time, even once the result is over the length limit, so
    ``printf('%.*c', 2000000000, 'x')`` takes seconds inside one call. Any
    width, or a ``%c`` precision, over ``max_bytes`` could only give a value
    over the limit, so it is refused here at once.
    """
    if not args or not isinstance(args[0], str):
        return None
    fmt, rest = args[0], list(args[1:])

    def take() -> Any:
        return rest.pop(0) if rest else None

    for m in _PRINTF_SPEC.finditer(fmt):
        flags, width, precision, kind = m.groups()
        if kind == "%" and not flags and width is None and precision is None:
            continue
        w = _magnitude(take()) if width == "*" else int(width or 0)
        p = _magnitude(take()) if precision == "*" else int(precision or 0)
        if w > max_bytes or (kind == "c" and p > max_bytes):
            return f"{m.group()!r} would make a value longer than the {max_bytes}-byte limit"
        if kind not in ("", "%", "n"):
            take()
    return None


def _trim_problem(args: tuple[Any, ...], _max_bytes: int) -> str | None:
    """Why a two-argument ``trim`` would take too long, or None.

    SQLite compares each trimmed character with every character of the set,
    so ``trim(x, y)`` costs up to ``len(x) * len(y)`` comparisons (seconds
    for two long values, in one uninterruptible call).
    """
    x, y = args
    if isinstance(x, str | bytes) and isinstance(y, str | bytes) and len(x) * len(y) > _TRIM_MAX_PAIRS:
        return f"a set of {len(y)} characters on a value of {len(x)} is over the {_TRIM_MAX_PAIRS:.0e}-comparison limit"
    return None


_TRIM_MAX_PAIRS = 10_000_000  # about 40 ms of SQLite's trim
_PRECHECKS: dict[str, Callable[[tuple[Any, ...], int], str | None]] = {
    "printf": _printf_problem, "format": _printf_problem,
    "trim": _trim_problem, "ltrim": _trim_problem, "rtrim": _trim_problem,
}


def _magnitude(value: Any) -> float:
    """|value| as SQLite's integer conversion could read it (text by its leading number)."""
    if isinstance(value, bool | int | float):
        return abs(float(value))
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str) and (m := _LEADING_NUMBER.match(value)):
        try:
            return abs(float(m.group()))
        except OverflowError:
            return float("inf")
    return 0.0


def _read_only_authorizer(denied: list[str]):
    """An SQLite authorizer that allows reads only and notes in ``denied`` why it refused anything."""

    def authorize(action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None) -> int:
        if action in _READ_ACTIONS:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in ALLOWED_FUNCTIONS:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in READONLY_PRAGMAS:
            return sqlite3.SQLITE_OK
        what = _ACTION_NAMES.get(action, f"authorizer action {action}")
        target = arg2 if action == sqlite3.SQLITE_FUNCTION else arg1
        denied.append(f"{what} on {target}" if target else what)
        return sqlite3.SQLITE_DENY

    return authorize
