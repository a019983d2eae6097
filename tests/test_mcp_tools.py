"""MCP servers as tools, against a real MCP server over stdio and streamable HTTP.

The server is written with the SDK's server API (``MCPServer``, FastMCP's 2.x
name) in :func:`build_server` below; this file doubles as its launcher:
``python tests/test_mcp_tools.py stdio`` serves it over stdin/stdout (that is how
the stdio tests spawn it), the HTTP tests serve it with uvicorn in a thread.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("mcp")

from agentrft.tools.base import Tool, ToolContext, ToolFailure, run_sync  # noqa: E402
from agentrft.tools.mcp_tools import MCPServerConfig, MCPServerError, MCPToolset  # noqa: E402
from agentrft.types import ToolErrorKind  # noqa: E402

HERE = Path(__file__).resolve()


def build_server():
    """The MCP server under test: a few tools covering results, errors, state and crashes."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server = MCPServer("agentrft-test", log_level="WARNING")
    state = {"count": 0}

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    def fail(reason: str) -> str:
        """Always fails with the given reason (ToolError: the SDK shows its text to the client)."""
        raise ToolError(reason)

    @server.tool()
    def count() -> int:
        """Increment and return a counter kept by the server process."""
        state["count"] += 1
        return state["count"]

    @server.tool()
    def big(n: int) -> str:
        """Return n characters."""
        return "y" * n

    @server.tool()
    async def slow(seconds: float) -> str:
        """Sleep, then answer."""
        await asyncio.sleep(seconds)
        return "done"

    @server.tool()
    def crash() -> str:
        """Kill the server process (stdio transport failure)."""
        os._exit(3)

    return server


# -- helpers ---------------------------------------------------------------------------
def ctx() -> ToolContext:
    return ToolContext(trace_id="trace-mcp", call_id="call_1", turn=0)


def call(tool: Tool, args: dict) -> str:
    return run_sync(tool.acall(args, ctx()), timeout=30)


def failure(tool: Tool, args: dict) -> ToolFailure:
    with pytest.raises(ToolFailure) as info:
        call(tool, args)
    return info.value


def stdio_config(**kw) -> MCPServerConfig:
    return MCPServerConfig(name="test-stdio", command=sys.executable, args=[str(HERE), "stdio"], **kw)


@pytest.fixture(scope="module")
def stdio_toolset():
    toolset = MCPToolset(stdio_config())
    run_sync(toolset.open(), timeout=60)
    yield toolset
    run_sync(toolset.close(), timeout=30)


class _HeaderRecorder:
    """ASGI middleware that remembers the headers of every HTTP request."""

    def __init__(self, app):
        self.app, self.seen = app, []

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            self.seen.append({k.decode().lower(): v.decode() for k, v in scope["headers"]})
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def http_server():
    import uvicorn

    app = _HeaderRecorder(build_server().streamable_http_app())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/mcp", app
    server.should_exit = True
    thread.join(10)
    sock.close()


def by_name(toolset: MCPToolset) -> dict[str, Tool]:
    return {t.name: t for t in toolset.tools}


# -- stdio -------------------------------------------------------------------------------
def test_stdio_lists_tools_with_openai_function_schemas(stdio_toolset):
    tools = by_name(stdio_toolset)
    assert set(tools) == {"add", "echo", "fail", "count", "big", "slow", "crash"}
    schema = tools["add"].schema()
    assert schema["type"] == "function"
    fn = schema["function"]
    assert fn["name"] == "add" and fn["description"] == "Add two integers."
    assert fn["parameters"]["type"] == "object"
    assert set(fn["parameters"]["properties"]) == {"a", "b"} and set(fn["parameters"]["required"]) == {"a", "b"}
    assert all(isinstance(t, Tool) and t.has_implementation for t in tools.values())


def test_stdio_calls_and_state_survive_across_turns(stdio_toolset):
    tools = by_name(stdio_toolset)
    assert call(tools["add"], {"a": 2, "b": 40}) == "42"
    assert call(tools["echo"], {"text": "héllo"}) == "héllo"
    first = int(call(tools["count"], {}))
    assert int(call(tools["count"], {})) == first + 1  # one session (one process) for the whole rollout


def test_stdio_concurrent_calls_in_one_turn(stdio_toolset):
    add = by_name(stdio_toolset)["add"]

    async def turn():
        return await asyncio.gather(*(add.acall({"a": i, "b": i}, ctx()) for i in range(8)))

    assert run_sync(turn(), timeout=30) == [str(2 * i) for i in range(8)]


def test_stdio_error_result_is_a_tool_error(stdio_toolset):
    err = failure(by_name(stdio_toolset)["fail"], {"reason": "no such account"})
    assert err.kind == ToolErrorKind.TOOL_ERROR
    assert "no such account" in err.message


def test_stdio_invalid_arguments_are_a_tool_error(stdio_toolset):
    err = failure(by_name(stdio_toolset)["add"], {"a": "not a number"})
    assert err.kind == ToolErrorKind.TOOL_ERROR


def test_unknown_tool_is_a_tool_error(stdio_toolset):
    with pytest.raises(ToolFailure) as info:
        run_sync(stdio_toolset.call("nope", {}), timeout=30)
    assert info.value.kind == ToolErrorKind.TOOL_ERROR and "nope" in info.value.message


def test_output_is_truncated(stdio_toolset):
    toolset = stdio_toolset
    limit = toolset.config.max_output_bytes
    out = call(by_name(toolset)["big"], {"n": limit + 10})
    assert out.endswith("[truncated: 10 bytes omitted]")


def test_calls_from_another_event_loop_use_the_session_on_the_tools_loop(stdio_toolset):
    add = by_name(stdio_toolset)["add"]
    assert asyncio.run(add.acall({"a": 1, "b": 2}, ctx())) == "3"


def test_stdio_server_crash_is_infrastructure_and_later_calls_too():
    async def scenario():
        async with MCPToolset(stdio_config()) as toolset:
            tools = by_name(toolset)
            with pytest.raises(ToolFailure) as crash:
                await tools["crash"].acall({}, ctx())
            with pytest.raises(ToolFailure) as after:
                await tools["add"].acall({"a": 1, "b": 1}, ctx())
            return crash.value, after.value

    crash, after = run_sync(scenario(), timeout=60)
    assert crash.kind == ToolErrorKind.INFRASTRUCTURE
    assert after.kind == ToolErrorKind.INFRASTRUCTURE


def test_call_timeout_is_infrastructure():
    async def scenario():
        async with MCPToolset(stdio_config(call_timeout_s=0.3)) as toolset:
            with pytest.raises(ToolFailure) as info:
                await by_name(toolset)["slow"].acall({"seconds": 5}, ctx())
            assert await by_name(toolset)["add"].acall({"a": 1, "b": 1}, ctx()) == "2"  # the session survives
            return info.value

    err = run_sync(scenario(), timeout=60)
    assert err.kind == ToolErrorKind.INFRASTRUCTURE and "timed out" in err.message


def test_tool_allow_list_and_missing_tools():
    async def scenario():
        async with MCPToolset(stdio_config(tools=["add"])) as toolset:
            return [t.name for t in toolset.tools]

    assert run_sync(scenario(), timeout=60) == ["add"]
    with pytest.raises(MCPServerError, match=r"has no tools \['search'\]"):
        run_sync(MCPToolset(stdio_config(tools=["search"])).open(), timeout=60)


def test_server_that_does_not_start_is_a_clear_error():
    config = MCPServerConfig(name="broken", command=sys.executable, args=["-c", "import sys; sys.exit(2)"])
    with pytest.raises(MCPServerError, match="'broken'"):
        run_sync(MCPToolset(config).open(), timeout=60)
    config = MCPServerConfig(name="missing", command="/nonexistent/mcp-server")
    with pytest.raises(MCPServerError, match="failed to start"):
        run_sync(MCPToolset(config).open(), timeout=60)


def test_calls_after_close_are_infrastructure():
    toolset = MCPToolset(stdio_config())
    tools = run_sync(toolset.open(), timeout=60)
    run_sync(toolset.close(), timeout=30)
    run_sync(toolset.close(), timeout=30)  # idempotent
    assert failure(tools[0], {}).kind == ToolErrorKind.INFRASTRUCTURE
    with pytest.raises(RuntimeError, match="not open"):
        toolset.tools


def test_config_needs_exactly_one_transport():
    with pytest.raises(ValueError, match="exactly one"):
        MCPServerConfig(name="x")
    with pytest.raises(ValueError, match="exactly one"):
        MCPServerConfig(name="x", command="a", url="http://h/mcp")
    with pytest.raises(ValueError, match="headers apply to HTTP"):
        MCPServerConfig(name="x", command="a", headers={"a": "b"})
    with pytest.raises(ValueError, match="extra"):
        MCPServerConfig(name="x", command="a", transport="stdio")


# -- streamable HTTP -------------------------------------------------------------------------
def test_http_lists_and_calls_tools_with_headers(http_server, monkeypatch):
    url, recorder = http_server
    monkeypatch.setenv("MCP_TOKEN", "t0ken")
    config = MCPServerConfig(name="test-http", url=url, headers={"Authorization": "Bearer ${MCP_TOKEN}"})

    async def scenario():
        async with MCPToolset(config) as toolset:
            tools = by_name(toolset)
            assert tools["echo"].schema()["function"]["parameters"]["required"] == ["text"]
            results = await asyncio.gather(tools["add"].acall({"a": 20, "b": 22}, ctx()), tools["echo"].acall({"text": "hi"}, ctx()))
            with pytest.raises(ToolFailure) as err:
                await tools["fail"].acall({"reason": "bad input"}, ctx())
            return set(tools), results, err.value

    names, results, err = run_sync(scenario(), timeout=60)
    assert {"add", "echo", "fail"} <= names
    assert results == ["42", "hi"]
    assert err.kind == ToolErrorKind.TOOL_ERROR and "bad input" in err.message
    assert recorder.seen and all(h.get("authorization") == "Bearer t0ken" for h in recorder.seen)


def test_http_sessions_survive_across_turns(http_server):
    url, _ = http_server
    toolset = MCPToolset(MCPServerConfig(name="test-http", url=url))
    run_sync(toolset.open(), timeout=60)
    try:
        add = by_name(toolset)["add"]
        for turn in range(3):  # separate run_sync calls, like separate turns of a rollout
            assert call(add, {"a": turn, "b": 1}) == str(turn + 1)
    finally:
        run_sync(toolset.close(), timeout=30)


def test_http_server_not_reachable_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = MCPServerConfig(name="gone", url=f"http://127.0.0.1:{port}/mcp", startup_timeout_s=10)
    with pytest.raises(MCPServerError, match="'gone'"):
        run_sync(MCPToolset(config).open(), timeout=60)


if __name__ == "__main__":
    if sys.argv[1:] == ["stdio"]:
        build_server().run("stdio")
    else:
        sys.exit("usage: python tests/test_mcp_tools.py stdio")
