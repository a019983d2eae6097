"""Resource bombs against the support desk's read-only ``sql_query``: each ends in time, typed, and small.

Every bomb is sized so that, without the limits, it would build at most a few
hundred MB or run for a few seconds (enough to fail an assertion, never
enough to hurt the machine). Memory is the peak resident set of this process during the call
(``VmHWM`` after resetting it through ``/proc/self/clear_refs``).
"""

from __future__ import annotations

import json
import sqlite3
import time

import pytest

from agentrft.envs.support import SupportEnv, load_split
from agentrft.envs.support.env import SqlLimits
from agentrft.tools.base import ToolFailure
from agentrft.types import ToolErrorKind

from memory_probe import measure

BUDGET_S = 0.5
SLACK_S = 0.2 + 0.3  # the promised 0.2 s, plus room for a loaded 2-core machine
MAX_GROWTH_MB = 64.0
A = "printf('%.*c', 99999, 'a')"  # the longest value the limits allow, built cheaply
H = "printf('%.*c', 49999, 'a') || 'b'"


@pytest.fixture(scope="module")
def env():
    e = SupportEnv(sql_limits=SqlLimits(time_limit_s=BUDGET_S))
    e.setup(load_split("validation")[0])
    e.sql_query("SELECT count(*) FROM orders")  # warm: the first query builds caches
    yield e
    e.close()


def columns_of(term: str, per_column: int, columns: int) -> str:
    return ", ".join(" + ".join([term] * per_column) for _ in range(columns))


BOMBS = {
    # a 150 MB string in one printf call (the reported bomb is 900 MB)
    "printf": ("SELECT length(printf('%.*c', 150000000, 'x'))", ToolErrorKind.TOOL_ERROR),
    "format_negative_precision": ("SELECT length(format('%.*c', -150000000, 'x'))", ToolErrorKind.TOOL_ERROR),
    # doubles a string until it is 32 MB (the reported one never stops)
    "cte_doubling": (
        "WITH RECURSIVE r(s) AS (SELECT 'x' UNION ALL SELECT s || s FROM r WHERE length(s) < 30000000) "
        "SELECT max(length(s)) FROM r",
        ToolErrorKind.TOOL_ERROR,
    ),
    # 1e3 -> 1e6 -> 5e7 -> 1e8 characters
    "nested_replace": (
        "SELECT length(replace(replace(replace(printf('%.*c', 1000, 'x'), 'x', printf('%.*c', 1000, 'y')), "
        "'y', printf('%.*c', 50, 'z')), 'z', 'ab'))",
        ToolErrorKind.TOOL_ERROR,
    ),
    "zeroblob": ("SELECT length(zeroblob(100000000))", ToolErrorKind.GUARDRAIL),
    "randomblob": ("SELECT length(randomblob(100000000))", ToolErrorKind.GUARDRAIL),
    "cartesian_count": ("SELECT count(*) FROM orders a, orders b, orders c, orders d", ToolErrorKind.TIMEOUT),
    "endless_group_concat": (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) "
        "SELECT length(group_concat(printf('%.*c', 1000, 'a'))) FROM r",
        ToolErrorKind.TIMEOUT,  # past the length limit the aggregate only drops input, until the deadline
    ),
    "endless_distinct": (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) "
        "SELECT count(DISTINCT printf('%.*c', 99000, 'a') || n) FROM r",
        ToolErrorKind.TIMEOUT,
    ),
    # 64 quadratic instr calls in a row, ~0.08 s each: no loop, so no interrupt check between them
    "straight_line_instr": (
        f"WITH t(a, h) AS (SELECT {A}, {H}) SELECT {columns_of('instr(a, h)', 16, 4)} FROM t",
        ToolErrorKind.TIMEOUT,
    ),
    # one trim call comparing 1e5 characters with a set of 8e3: seconds inside one call
    "trim_with_a_large_set": (
        f"SELECT length(trim({A}, printf('%.*c', 8000, 'b') || 'a'))",
        ToolErrorKind.TOOL_ERROR,
    ),
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_a_bomb_ends_within_the_budget_typed_and_small(env, name):
    query, kind = BOMBS[name]
    outcome, seconds, growth_mb = measure(lambda: env.sql_query(query))
    assert isinstance(outcome, ToolFailure), f"{name} was answered: {str(outcome)[:200]}"
    assert outcome.kind == kind, outcome.message
    assert seconds < BUDGET_S + SLACK_S, f"{name} took {seconds:.2f}s"
    assert growth_mb < MAX_GROWTH_MB, f"{name} grew the process by {growth_mb:.0f} MB"
    assert json.loads(env.sql_query("SELECT count(*) FROM orders"))["rows"] == [[150]]  # still usable


def test_timeout_names_the_limit_and_a_late_watchdog_never_hits_the_next_query(env):
    with pytest.raises(ToolFailure) as e:
        env.sql_query("SELECT count(*) FROM orders a, orders b, orders c, orders d")
    assert e.value.kind == ToolErrorKind.TIMEOUT and f"{BUDGET_S:g}s limit" in e.value.message
    end = time.monotonic() + BUDGET_S + 0.3  # past the deadline a leaked watchdog of any query would have
    while time.monotonic() < end:
        assert json.loads(env.sql_query("SELECT count(*) FROM orders o, customers c"))["rows"] == [[7500]]


def test_a_wide_result_is_capped_in_characters_with_a_marker(env):
    query = "SELECT " + ", ".join([A] * 64)  # 64 columns of 100 KB
    outcome, seconds, growth_mb = measure(lambda: env.sql_query(query))
    assert isinstance(outcome, str), outcome
    assert len(outcome) < 2 * SqlLimits().max_result_chars
    assert "[truncated: " in outcome
    assert growth_mb < MAX_GROWTH_MB and seconds < BUDGET_S + SLACK_S


def test_many_rows_are_capped_by_characters_as_well_as_count(env):
    out = json.loads(env.sql_query(
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 40) "
        "SELECT n, printf('%.*c', 2000, 'a') FROM r"
    ))
    assert 1 <= len(out["rows"]) < 40 and "characters" in out["truncated"]


def test_a_long_query_is_refused_before_it_runs(env):
    with pytest.raises(ToolFailure) as e:
        env.sql_query("SELECT 1" + " " * 5000)
    assert e.value.kind == ToolErrorKind.TOOL_ERROR and "4000" in e.value.message


def test_guarded_functions_give_sqlites_own_results(env):
    expressions = [
        "printf('%.2f', 3.14159)", "printf('%5s|%-5s|%05d', 'a', 'b', 42)", "printf('%.*c', 3, 'x')",
        "printf('%d %.*c', 1000000, 3, 'x')", "printf('%q', 'it''s')", "format('%,d', 1234567)", "printf('%%')",
        "instr('hello', 'll')", "instr(NULL, 'a')", "instr(x'0102', x'02')", "replace('a-b-c', '-', '+')",
        "replace(12345, 3, 9)", "replace('abc', '', 'x')", "'Hello' LIKE 'h%'", "like('h%', 'Hello')",
        "'a_c' LIKE 'a!_c' ESCAPE '!'", "'abc' GLOB 'a*'", "'ABC' GLOB 'a*'", "trim('xxaxx', 'x')",
        "ltrim('  a  ')", "rtrim('abcc', 'c')", "trim(12.50, '0')",
    ]
    query = "SELECT " + ", ".join(expressions)
    plain = sqlite3.connect(":memory:")
    try:
        expected = [list(plain.execute(query).fetchone())]
    finally:
        plain.close()
    assert json.loads(env.sql_query(query))["rows"] == expected


def test_blobs_come_back_as_hex_literals(env):
    assert json.loads(env.sql_query("SELECT CAST('ab' AS BLOB)"))["rows"] == [["x'6162'"]]
