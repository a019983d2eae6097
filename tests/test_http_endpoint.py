"""HTTP tool endpoints against real local servers.

The "existing Agent RFT tool server" is tests/fixtures/agent_rft_tool_server.py
(standard library only, written from the wire format alone); the FastAPI example
server in examples/tool_server.py is exercised end to end and timed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from agentrft.errors import ConfigError, ToolDefinitionError
from agentrft.tools.base import Tool, ToolContext, ToolFailure, run_sync
from agentrft.tools.http_endpoint import (
    EndpointClient,
    EndpointToolConfig,
    HttpEndpointTool,
    endpoint_clients,
    endpoint_tools_for_row,
    truncate_output,
)
from agentrft.types import ToolErrorKind

ROOT = Path(__file__).resolve().parents[1]
FAST_RETRY = {"backoff_base_s": 0.01, "backoff_max_s": 0.02}


def _load_fixture_module():
    spec = importlib.util.spec_from_file_location("agent_rft_tool_server", ROOT / "tests/fixtures/agent_rft_tool_server.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server():
    with _load_fixture_module().AgentRFTToolServer() as srv:
        yield srv


_clients: list[EndpointClient] = []


def track(client: EndpointClient) -> EndpointClient:
    """Close this client's connection pool after the test (a run keeps one per endpoint for its lifetime)."""
    _clients.append(client)
    return client


@pytest.fixture(autouse=True)
def _reset(request):
    if "server" in request.fixturenames:
        request.getfixturevalue("server").reset()
    yield
    while _clients:
        run_sync(_clients.pop().aclose(), timeout=10)


def clients_for(configs) -> dict[str, EndpointClient]:
    clients = endpoint_clients(configs)
    for c in clients.values():
        track(c)
    return clients


def schema(name: str) -> dict:
    return {
        "type": "function",
        "function": {"name": name, "description": f"{name} tool", "parameters": {"type": "object", "properties": {}}},
    }


ROW = {"id": "row-1", "messages": [{"role": "user", "content": "hi"}], "tools": [schema("echo"), schema("add")], "answer": 3}


def make_tool(server, path: str = "/tools", name: str = "echo", client: EndpointClient | None = None, **cfg):
    config = EndpointToolConfig(name=name, server_url=server.url + path, **{**FAST_RETRY, **cfg})
    return HttpEndpointTool(config, schema(name), track(client or EndpointClient.from_config(config)))


def ctx(trace_id: str = "trace-A", item: dict | None = None) -> ToolContext:
    return ToolContext(trace_id=trace_id, call_id="call_" + uuid.uuid4().hex[:8], turn=0, item=ROW if item is None else item)


def call(tool: Tool, args: dict, c: ToolContext | None = None) -> str:
    return run_sync(tool.acall(args, c or ctx()), timeout=30)


def failure(tool: Tool, args: dict | None = None) -> ToolFailure:
    with pytest.raises(ToolFailure) as info:
        call(tool, args or {})
    return info.value


# -- wire format ---------------------------------------------------------------
def test_request_has_exactly_the_wire_format_fields(server, monkeypatch):
    monkeypatch.setenv("TOOL_TOKEN", "s3cret")
    tool = make_tool(server, headers={"Authorization": "Bearer ${TOOL_TOKEN}"})
    c = ctx("trace-wire")
    assert call(tool, {"x": 1, "s": "é"}, c) == '{"s": "\\u00e9", "x": 1}'
    (rec,) = server.requests
    body = rec["body"]
    assert set(body) == {"type", "name", "arguments", "call_id", "id", "item", "trace_id"}
    assert body["type"] == "function_call"
    assert body["name"] == "echo"
    assert isinstance(body["arguments"], str) and json.loads(body["arguments"]) == {"x": 1, "s": "é"}
    assert body["call_id"] == c.call_id
    assert body["id"].startswith("fc_")
    assert body["item"] == ROW
    assert body["trace_id"] == "trace-wire"
    assert rec["headers"]["Authorization"] == "Bearer s3cret"
    assert rec["headers"]["Content-Type"] == "application/json"


def test_request_id_is_fresh_per_call(server):
    tool = make_tool(server)
    for _ in range(3):
        call(tool, {})
    ids = [r["body"]["id"] for r in server.requests]
    assert len(set(ids)) == 3


def test_trace_id_is_shared_within_a_rollout_and_differs_between_rollouts(server):
    echo, add = endpoint_tools_for_row(
        [EndpointToolConfig(name=n, server_url=server.url + "/tools") for n in ("echo", "add")],
        ROW,
        clients_for([EndpointToolConfig(name="echo", server_url=server.url + "/tools")]),
    )

    async def rollout(trace_id: str) -> None:
        for turn in range(2):  # two turns, two concurrent calls each
            await asyncio.gather(echo.acall({"t": turn}, ctx(trace_id)), add.acall({"a": 1, "b": turn}, ctx(trace_id)))

    traces = [uuid.uuid4().hex for _ in range(3)]

    async def all_rollouts() -> None:
        await asyncio.gather(*(rollout(t) for t in traces))

    run_sync(all_rollouts(), timeout=30)
    by_trace: dict[str, int] = {}
    for r in server.requests:
        by_trace[r["body"]["trace_id"]] = by_trace.get(r["body"]["trace_id"], 0) + 1
    assert by_trace == {t: 4 for t in traces}


def test_existing_server_answers_through_the_tool(server):
    tool = make_tool(server, name="add")
    assert call(tool, {"a": 2, "b": 40}) == "42"


# -- failure policy ---------------------------------------------------------------
def test_4xx_is_a_tool_error_shown_to_the_model_without_retry(server):
    tool = make_tool(server, "/bad-request")
    err = failure(tool)
    assert err.kind == ToolErrorKind.TOOL_ERROR
    assert err.message == "invalid argument: 'q' must be a non-empty string"
    assert len(server.requests) == 1
    assert tool.client.stats.tool_errors == 1 and tool.client.stats.retries == 0


def test_5xx_is_retried_then_succeeds(server):
    tool = make_tool(server, "/flaky?fail=2")
    assert call(tool, {"ok": True}) == '{"ok": true}'
    assert len(server.requests) == 3
    # the retries resend the same request: same call_id, id and trace_id
    assert len({json.dumps(r["body"], sort_keys=True) for r in server.requests}) == 1
    assert tool.client.stats.snapshot()["retries"] == 2


def test_persistent_5xx_is_infrastructure_after_three_retries(server):
    tool = make_tool(server, "/error500")
    err = failure(tool)
    assert err.kind == ToolErrorKind.INFRASTRUCTURE
    assert "after 4 attempts" in err.message and "HTTP 500" in err.message
    assert len(server.requests) == 4
    assert tool.client.stats.failures == 1


def test_retry_count_is_configurable(server):
    tool = make_tool(server, "/error500", max_retries=1)
    assert failure(tool).kind == ToolErrorKind.INFRASTRUCTURE
    assert len(server.requests) == 2


def test_timeout_is_retried_then_infrastructure(server):
    tool = make_tool(server, "/slow?delay=1.5", timeout_s=0.15, max_retries=2)
    t0 = time.perf_counter()
    err = failure(tool)
    assert err.kind == ToolErrorKind.INFRASTRUCTURE
    assert "timed out" in err.message
    assert len(server.requests) == 3
    assert time.perf_counter() - t0 < 1.4  # gave up on each attempt, never waited for the slow reply


def test_connection_refused_is_infrastructure():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave the block: nothing listens there
    config = EndpointToolConfig(name="echo", server_url=f"http://127.0.0.1:{port}/", **FAST_RETRY)
    tool = HttpEndpointTool(config, schema("echo"), track(EndpointClient.from_config(config)))
    err = failure(tool)
    assert err.kind == ToolErrorKind.INFRASTRUCTURE and "ConnectError" in err.message
    assert tool.client.stats.requests == 4


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/malformed/notjson", "not JSON"),
        ("/malformed/type", "type is 'message'"),
        ("/malformed/nooutput", "no 'output' field"),
        ("/malformed/outputtype", "'output' is a dict"),
        ("/malformed/callid", "does not match"),
    ],
)
def test_malformed_reply_is_infrastructure_with_a_clear_message(server, path, expected):
    tool = make_tool(server, path)
    err = failure(tool)
    assert err.kind == ToolErrorKind.INFRASTRUCTURE
    assert "malformed reply" in err.message and expected in err.message
    assert len(server.requests) == 1  # a broken server is not retried


def test_output_over_1mb_is_truncated_with_marker(server):
    tool = make_tool(server, "/huge?bytes=2500000")
    out = call(tool, {})
    assert out.endswith("\n[truncated: 1500000 bytes omitted]")
    assert out.startswith("x" * 1000) and len(out.encode()) < 1_000_100


def test_truncation_never_splits_a_character():
    text = "é" * 10  # 2 bytes each
    out = truncate_output(text, 5)
    assert out == "éé\n[truncated: 16 bytes omitted]"
    assert truncate_output("short", 5) == "short"


# -- limits -------------------------------------------------------------------------
def test_concurrency_limit_is_respected(server):
    client = EndpointClient(server.url + "/slow?delay=0.1", max_concurrency=3)
    tool = make_tool(server, "/slow?delay=0.1", client=client)

    async def many() -> None:
        await asyncio.gather(*(tool.acall({"i": i}, ctx()) for i in range(12)))

    run_sync(many(), timeout=30)
    assert len(server.requests) == 12
    assert server.max_in_flight("/slow?delay=0.1") == 3
    assert client.stats.max_in_flight == 3


def test_rate_limit_is_respected(server):
    rate, n = 20.0, 8
    client = EndpointClient(server.url + "/tools", rate_limit_per_s=rate)
    tool = make_tool(server, client=client)

    async def many() -> None:
        await asyncio.gather(*(tool.acall({"i": i}, ctx()) for i in range(n)))

    t0 = time.perf_counter()
    run_sync(many(), timeout=30)
    assert time.perf_counter() - t0 >= (n - 1) / rate * 0.95


# -- config and row matching ------------------------------------------------------------
def test_config_rejects_unknown_keys_and_bad_urls():
    with pytest.raises(ValueError, match="extra"):
        EndpointToolConfig(name="a", server_url="http://x", retries=3)
    with pytest.raises(ValueError, match="http"):
        EndpointToolConfig(name="a", server_url="localhost:8000")


def test_missing_header_variable_is_a_config_error(monkeypatch):
    monkeypatch.delenv("NOPE_NOT_SET", raising=False)
    config = EndpointToolConfig(name="echo", server_url="http://x", headers={"X-Key": "${NOPE_NOT_SET}"})
    with pytest.raises(ConfigError, match="NOPE_NOT_SET"):
        HttpEndpointTool(config, schema("echo"), EndpointClient.from_config(config))


def test_tools_for_row_match_schemas_by_name_in_both_schema_shapes():
    configs = [EndpointToolConfig(name=n, server_url="http://127.0.0.1:1/t") for n in ("echo", "add")]
    responses_shape = {"type": "function", "name": "add", "description": "adds", "parameters": {"type": "object"}}
    row = {"messages": [], "tools": [schema("echo"), responses_shape, schema("local_only")]}
    tools = endpoint_tools_for_row(configs, row, endpoint_clients(configs))
    assert [t.name for t in tools] == ["echo", "add"]
    assert tools[1].schema() == {"type": "function", "function": {k: v for k, v in responses_shape.items() if k != "type"}}
    assert all(isinstance(t, Tool) and t.has_implementation for t in tools)
    assert tools[0].client is tools[1].client  # one pooled client per endpoint


def test_declared_tool_missing_from_row_is_a_clear_error():
    configs = [EndpointToolConfig(name="search", server_url="http://127.0.0.1:1/t")]
    with pytest.raises(ToolDefinitionError, match=r"'search' is declared .* row 'row-1' .*\['add', 'echo'\]"):
        endpoint_tools_for_row(configs, ROW, endpoint_clients(configs))


def test_tools_sharing_an_endpoint_must_agree_on_limits():
    configs = [
        EndpointToolConfig(name="a", server_url="http://h/t", max_concurrency=4),
        EndpointToolConfig(name="b", server_url="http://h/t", max_concurrency=8),
    ]
    with pytest.raises(ConfigError, match="different limits"):
        endpoint_clients(configs)


def test_mock_transport_is_a_test_double_for_the_network():
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        return httpx.Response(200, json={"type": "function_call_output", "call_id": body["call_id"], "output": "ok"})

    config = EndpointToolConfig(name="echo", server_url="http://tools.invalid/")
    client = track(EndpointClient.from_config(config, transport=httpx.MockTransport(handler)))
    tool = HttpEndpointTool(config, schema("echo"), client)
    assert call(tool, {}) == "ok"


def test_calls_from_another_event_loop_are_forwarded_to_the_tools_loop(server):
    tool = make_tool(server, name="add")
    call(tool, {"a": 1, "b": 1})  # binds the client's pool to the background loop
    assert asyncio.run(tool.acall({"a": 2, "b": 3}, ctx())) == "5"


# -- the example server, end to end and timed ---------------------------------------------
@pytest.fixture(scope="module")
def example_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples/tool_server.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/schemas", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"example server did not start: {proc.stderr.read().decode()[-2000:]}")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stderr.close()


def test_example_server_tools(example_server):
    schemas = httpx.get(example_server + "/schemas").json()
    row = {"id": "r", "messages": [], "tools": schemas, "facts": {"answer": "42"}}
    configs = [EndpointToolConfig(name=f["function"]["name"], server_url=example_server + "/") for f in schemas]
    calc, lookup, pad = endpoint_tools_for_row(configs, row, clients_for(configs))
    assert call(calc, {"expression": "(3 + 4) * 12"}, ctx(item=row)) == "84"
    assert call(lookup, {"key": "answer"}, ctx(item=row)) == "42"  # a fact from the row itself
    err = failure(calc, {"expression": "1/0"})
    assert err.kind == ToolErrorKind.TOOL_ERROR and err.message == "division by zero"
    call(pad, {"action": "write", "text": "first"}, ctx("rollout-1", row))
    call(pad, {"action": "write", "text": "other"}, ctx("rollout-2", row))
    assert call(pad, {"action": "read"}, ctx("rollout-1", row)) == "first"


def measure_throughput(tool: Tool, calls: int, concurrency: int) -> float:
    """Tool calls per second with ``concurrency`` calls in flight."""

    async def worker(k: int) -> None:
        for i in range(k, calls, concurrency):
            await tool.acall({"expression": f"{i} * 2"}, ctx())

    async def run() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        return calls / (time.perf_counter() - t0)

    return run_sync(run(), timeout=120)


@pytest.mark.parametrize("concurrency", [1, 16])
def test_example_server_throughput(example_server, concurrency, capsys):
    config = EndpointToolConfig(name="calculator", server_url=example_server + "/", max_concurrency=16)
    tool = HttpEndpointTool(config, schema("calculator"), track(EndpointClient.from_config(config)))
    measure_throughput(tool, 20, concurrency)  # warm the pool
    rates = [measure_throughput(tool, 150, concurrency) for _ in range(3)]
    with capsys.disabled():
        print(f"\nendpoint throughput, concurrency {concurrency}: median {statistics.median(rates):.0f} calls/s "
              f"(runs: {', '.join(f'{r:.0f}' for r in rates)})")
    assert statistics.median(rates) > 20  # a floor that catches pathologies (serialised pool, retries), not a benchmark
    assert tool.client.stats.failures == 0
