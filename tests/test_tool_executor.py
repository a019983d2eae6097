"""ToolExecutor: typed failures, budget, deadlines, concurrency, order, truncation."""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import pytest

from agentrft.errors import ConfigError, ToolDefinitionError
from agentrft.tools import FunctionTool, SchemaOnlyTool, ToolContext, ToolExecutor, ToolFailure, ToolLimits, run_sync
from agentrft.types import ToolCall, ToolErrorKind


class Counter:
    """Counts how often each tool really ran (refused calls must not run)."""

    def __init__(self) -> None:
        self.runs: list[str] = []

    def search(self, query: str, limit: int = 3) -> str:
        """Search.

        Args:
            query: what to look for.
            limit: how many results.
        """
        self.runs.append(f"search:{query}")
        return f"results for {query} (limit {limit})"

    def boom(self, x: int) -> str:
        """Raise a plain exception."""
        self.runs.append("boom")
        raise ValueError(f"bad x {x}")

    def forbidden(self) -> str:
        """Report a typed failure."""
        self.runs.append("forbidden")
        raise ToolFailure(ToolErrorKind.TOOL_ERROR, "HTTP 403: not allowed")

    def quit(self) -> str:
        """Call sys.exit (must not stop the event loop)."""
        sys.exit(3)

    async def slow(self, seconds: float) -> str:
        """Sleep asynchronously."""
        await asyncio.sleep(seconds)
        return "slept"


def executor(c: Counter, **limits) -> ToolExecutor:
    tools = [FunctionTool(m) for m in (c.search, c.boom, c.forbidden, c.quit, c.slow)]
    return ToolExecutor(tools, ToolLimits(**limits), trace_id="trace-1", item={"id": "row"})


def test_failures_are_typed_in_call_order_and_later_calls_still_run():
    c = Counter()
    ex = executor(c, timeout_s=0.3)
    calls = [
        ToolCall("search", {"limit": 2}, id="missing"),
        ToolCall("search", {"query": "q", "limit": "ten"}, id="wrongtype"),
        ToolCall("nope", {}, id="unknown"),
        ToolCall("boom", {"x": 1}, id="raises"),
        ToolCall("forbidden", {}, id="toolfailure"),
        ToolCall("slow", {"seconds": 30}, id="timeout"),
        ToolCall("quit", {}, id="exit"),
        ToolCall("search", {"query": "ok"}, id="ok"),
    ]
    recs = ex.execute(calls, turn=1)
    assert [r.call.id for r in recs] == [c.id for c in calls]
    assert all(r.turn == 1 for r in recs)
    kinds = [r.error.kind if r.error else None for r in recs]
    assert kinds == [
        ToolErrorKind.INVALID_ARGUMENTS,
        ToolErrorKind.INVALID_ARGUMENTS,
        ToolErrorKind.UNKNOWN_TOOL,
        ToolErrorKind.EXCEPTION,
        ToolErrorKind.TOOL_ERROR,
        ToolErrorKind.TIMEOUT,
        ToolErrorKind.EXCEPTION,
        None,
    ]
    assert recs[0].result == "Error (invalid_arguments): 'query' is a required property"
    assert recs[1].error.message == "'ten' is not of type 'integer' (at $.limit)"
    assert "unknown tool 'nope'" in recs[2].result and "search" in recs[2].result
    assert recs[3].error.message == "ValueError: bad x 1"
    assert recs[3].result == "Error (exception): ValueError: bad x 1"
    assert recs[4].result == "Error (tool_error): HTTP 403: not allowed"
    assert recs[5].result.startswith("Error (timeout):")
    assert recs[6].error.message.startswith("SystemExit")
    assert recs[7].ok and recs[7].result == "results for ok (limit 3)"
    assert all(r.latency_s > 0 for r in recs)
    # Validation failures never reached the function.
    assert c.runs.count("search:q") == 0 and "search:ok" in c.runs

    (nxt,) = ex.execute([ToolCall("search", {"query": "again"})], turn=2)
    assert nxt.ok and nxt.turn == 2 and nxt.result == "results for again (limit 3)"


def test_budget_counts_every_attempt_across_turns_and_refused_calls_do_not_run():
    c = Counter()
    ex = executor(c, max_calls=3)
    first = ex.execute([ToolCall("search", {"query": "a"}), ToolCall("nope", {})], turn=1)
    assert [r.ok for r in first] == [True, False] and ex.calls_made == 2
    second = ex.execute([ToolCall("search", {"query": "b"}), ToolCall("search", {"query": "c"})], turn=2)
    assert second[0].ok
    assert second[1].error.kind == ToolErrorKind.BUDGET_EXCEEDED
    assert second[1].result.startswith("Error (budget_exceeded):")
    (third,) = ex.execute([ToolCall("search", {"query": "d"})], turn=3)
    assert third.error.kind == ToolErrorKind.BUDGET_EXCEEDED
    assert c.runs == ["search:a", "search:b"] and ex.calls_made == 5


def test_timed_out_sync_tool_does_not_hold_up_the_rollout():
    release, finished = threading.Event(), threading.Event()

    def stuck(x: int) -> str:
        release.wait(10)  # a hung network call, say
        finished.set()
        return "late"

    def quick() -> str:
        return "quick"

    ex = ToolExecutor([FunctionTool(stuck), FunctionTool(quick)], ToolLimits(timeout_s=0.2))
    recs = ex.execute([ToolCall("stuck", {"x": 1}), ToolCall("quick", {})], turn=1)
    # execute returned while the thread is still blocked: nothing waited for it.
    assert not finished.is_set()
    assert recs[0].error.kind == ToolErrorKind.TIMEOUT and "0.2s" in recs[0].error.message
    assert recs[1].ok and recs[1].result == "quick"
    (again,) = ex.execute([ToolCall("quick", {})], turn=2)
    assert again.result == "quick"
    release.set()
    assert finished.wait(5)  # the abandoned call ends on its own; its result is dropped


def sleepy_sync(tag: str) -> str:
    time.sleep(0.5)
    return tag


async def sleepy_async(tag: str) -> str:
    await asyncio.sleep(0.5)
    return tag


@pytest.mark.parametrize("fn", [sleepy_sync, sleepy_async], ids=["time.sleep", "asyncio.sleep"])
def test_calls_of_one_turn_run_concurrently(fn):
    ex = ToolExecutor([FunctionTool(fn)], ToolLimits(timeout_s=5))
    t0 = time.perf_counter()
    recs = ex.execute([ToolCall(fn.__name__, {"tag": "first"}), ToolCall(fn.__name__, {"tag": "second"})], turn=1)
    elapsed = time.perf_counter() - t0
    assert [r.result for r in recs] == ["first", "second"]
    assert all(r.latency_s >= 0.45 for r in recs)
    assert elapsed < 0.9, f"two 0.5 s calls took {elapsed:.2f}s: they did not overlap"


def test_results_follow_call_order_not_completion_order():
    async def wait(ms: int) -> int:
        await asyncio.sleep(ms / 1000)
        return ms

    ex = ToolExecutor([FunctionTool(wait)], ToolLimits())
    recs = ex.execute([ToolCall("wait", {"ms": ms}) for ms in (120, 0, 60)], turn=1)
    assert [r.result for r in recs] == ["120", "0", "60"]


def test_output_and_error_text_are_truncated_with_a_marker():
    def big() -> str:
        return "x" * 50

    def loud() -> str:
        raise RuntimeError("y" * 50)

    ex = ToolExecutor([FunctionTool(big), FunctionTool(loud)], ToolLimits(max_output_chars=10))
    ok, err = ex.execute([ToolCall("big", {}), ToolCall("loud", {})], turn=1)
    assert ok.result == "x" * 10 + "\n[truncated: 40 characters omitted]"
    # The message is cut; the "Error (kind):" prefix the model keys on is kept whole.
    assert err.error.kind == ToolErrorKind.EXCEPTION
    assert err.result == "Error (exception): RuntimeErr\n[truncated: 54 characters omitted]"


def test_tools_receive_the_rollout_context():
    seen: list[ToolContext] = []

    def whoami(ctx: ToolContext) -> str:
        seen.append(ctx)
        return "ok"

    ex = ToolExecutor([FunctionTool(whoami)], ToolLimits(), trace_id="trace-9", item={"id": "row-9"})
    ex.execute([ToolCall("whoami", {}, id="call_a"), ToolCall("whoami", {}, id="call_b")], turn=4)
    assert sorted(c.call_id for c in seen) == ["call_a", "call_b"]
    assert {(c.trace_id, c.turn, c.item["id"]) for c in seen} == {("trace-9", 4, "row-9")}


def test_parse_errors_and_schema_only_tools():
    refund = SchemaOnlyTool({"type": "function", "function": {"name": "refund", "parameters": {"type": "object"}}})
    c = Counter()
    ex = ToolExecutor([FunctionTool(c.search), refund], ToolLimits())
    rec = ex.record_parse_error('{"name": "search", "arguments": {', "Expecting value: line 1", turn=3)
    assert rec.error.kind == ToolErrorKind.PARSE_ERROR and rec.turn == 3
    assert rec.call.name == "<unparsed>" and rec.call.arguments == {"raw": '{"name": "search", "arguments": {'}
    assert rec.result == "Error (parse_error): Expecting value: line 1"
    assert ex.calls_made == 0

    assert ex.schema_only_called([ToolCall("search", {"query": "x"}), ToolCall("refund", {})])
    assert not ex.schema_only_called([ToolCall("search", {"query": "x"}), ToolCall("unknown", {})])


def test_bad_definitions_and_limits_are_rejected():
    def f(a: int) -> int:
        return a

    with pytest.raises(ToolDefinitionError, match="two tools"):
        ToolExecutor([FunctionTool(f), FunctionTool(f)], ToolLimits())
    broken = SchemaOnlyTool({"type": "function", "function": {"name": "b", "parameters": {"type": "no-such-type"}}})
    with pytest.raises(ToolDefinitionError, match="invalid parameters schema"):
        ToolExecutor([broken], ToolLimits())
    with pytest.raises(ConfigError):
        ToolLimits(timeout_s=0)


def test_async_api_from_a_running_loop():
    def echo(text: str) -> str:
        return text

    ex = ToolExecutor([FunctionTool(echo)], ToolLimits())
    (rec,) = asyncio.run(ex.aexecute([ToolCall("echo", {"text": "hi"})], turn=1))
    assert rec.result == "hi"
    assert run_sync(ex.aexecute([ToolCall("echo", {"text": "again"})], turn=2))[0].result == "again"


def test_a_cancellation_raised_inside_a_tool_fails_only_that_call():
    async def flaky() -> str:
        raise asyncio.CancelledError("inner cancel scope")

    def fine() -> str:
        return "fine"

    ex = ToolExecutor([FunctionTool(flaky), FunctionTool(fine)], ToolLimits())
    bad, good = ex.execute([ToolCall("flaky", {}), ToolCall("fine", {})], turn=1)
    assert bad.error.kind == ToolErrorKind.EXCEPTION and "CancelledError" in bad.error.message
    assert good.result == "fine"
