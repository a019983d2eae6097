"""The trust boundary: the egress policy, the MCP registry and the submission limits.

Each refused class of address is checked on literal IPs and on names that
resolve to them; then the places URLs enter agentrft (the ``endpoint``
grader, judges, HTTP tool endpoints, HTTP MCP servers) are shown to refuse
before any connection: a real server on 127.0.0.1 counts every TCP
connection it accepts, and stays at zero. The same server with the address
allowed is the positive control, so the refusal is the policy's doing.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import ValidationError

from agentrft.graders import JudgeConfig, load_grader
from agentrft.graders.endpoint import EndpointGrader
from agentrft.graders.spec import parse_spec
from agentrft.graders.testing import chat_completion
from agentrft.tools.base import ToolContext, run_sync
from agentrft.tools.http_endpoint import EndpointClient, EndpointToolConfig, endpoint_clients
from agentrft.tools.mcp_tools import MCPServerConfig, MCPToolset
from agentrft.trust import (
    TRUSTED_EGRESS,
    EgressDenied,
    EgressPolicy,
    LimitExceeded,
    McpCommand,
    McpCommandRefused,
    McpRegistry,
    SubmissionLimits,
    TrustError,
    address_class,
)
from agentrft.trust import egress as egress_module

PUBLIC = "93.184.216.34"  # a global unicast address; never connected to (names resolving to it are stubbed)


class CountingServer:
    """An HTTP server on 127.0.0.1 that counts every TCP connection and answers each POST with ``answer``."""

    def __init__(self, answer: Any = None):
        self.connections = 0
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
                outer.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                       "body": body})
                reply = answer(body) if callable(answer) else answer
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def verify_request(self, request: Any, client_address: Any) -> bool:
                outer.connections += 1
                return True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "CountingServer":
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def resolver(monkeypatch):
    """``resolver({"name": ["addr", ...], ...})``: names resolve to the given addresses (one list per lookup
    in turn when given a list of lists), everything else as the system resolves it."""
    real = egress_module.resolve_host

    def install(table: dict[str, Any]) -> list[str]:
        looked_up: list[str] = []

        def fake(host: str, port: int) -> tuple[str, ...]:
            looked_up.append(host)
            if host not in table:
                return real(host, port)
            answers = table[host]
            if answers and isinstance(answers[0], list):  # a sequence of answers: DNS that changes
                return tuple(answers.pop(0) if len(answers) > 1 else answers[0])
            return tuple(answers)

        monkeypatch.setattr(egress_module, "resolve_host", fake)
        return looked_up

    return install


def refused(policy: EgressPolicy, url: str) -> str:
    with pytest.raises(EgressDenied) as info:
        policy.check_url(url, "test")
    assert isinstance(info.value, TrustError)
    return info.value.reason


# -- addresses --------------------------------------------------------------------------
LOOPBACK = ["127.0.0.1", "127.9.9.9", "[::1]", "0.0.0.0", "[::ffff:127.0.0.1]"]
LINK_LOCAL = ["169.254.1.1", "[fe80::1]"]
PRIVATE = ["10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "[fc00::1]", "[fd12:3456::1]"]
METADATA = ["169.254.169.254", "[fd00:ec2::254]", "169.254.170.2", "[::ffff:169.254.169.254]", "[64:ff9b::a9fe:a9fe]"]


def _open_to(host: str, **flags: bool) -> EgressPolicy:
    return EgressPolicy(allow=(f"http://{host}:8080",), **flags)


@pytest.mark.parametrize("host", LOOPBACK)
def test_loopback_addresses_are_refused_unless_allowed(host):
    reason = refused(_open_to(host, allow_private=True), f"http://{host}:8080/")
    assert "loopback address (allow_loopback is off)" in reason
    assert _open_to(host, allow_loopback=True).check_url(f"http://{host}:8080/", "test")


@pytest.mark.parametrize("host", LINK_LOCAL)
def test_link_local_addresses_are_refused_unless_private_ones_are_allowed(host):
    assert "link-local address (allow_private is off)" in refused(_open_to(host, allow_loopback=True),
                                                                   f"http://{host}:8080/")
    assert _open_to(host, allow_private=True).check_url(f"http://{host}:8080/", "test")


@pytest.mark.parametrize("host", PRIVATE)
def test_private_addresses_are_refused_unless_allowed(host):
    reason = refused(_open_to(host, allow_loopback=True), f"http://{host}:8080/")
    assert "private address (allow_private is off)" in reason
    assert _open_to(host, allow_private=True).check_url(f"http://{host}:8080/", "test")


@pytest.mark.parametrize("host", METADATA)
def test_metadata_addresses_are_always_refused(host):
    policy = _open_to(host, allow_loopback=True, allow_private=True)
    assert "metadata address (never allowed)" in refused(policy, f"http://{host}:8080/latest/meta-data/")


@pytest.mark.parametrize("host", ["224.0.0.1", "240.0.0.1", "[ff02::1]"])
def test_multicast_and_reserved_addresses_are_always_refused(host):
    assert "never allowed" in refused(_open_to(host, allow_loopback=True, allow_private=True), f"http://{host}:8080/")


def test_metadata_host_names_are_refused_without_resolving_them(resolver):
    looked_up = resolver({})
    policy = EgressPolicy(allow=("http://metadata.google.internal",), allow_private=True)
    assert "cloud metadata service" in refused(policy, "http://metadata.google.internal/computeMetadata/v1/")
    assert looked_up == []


def test_names_are_judged_by_every_address_they_resolve_to(resolver):
    resolver({"api.example.com": [PUBLIC], "mixed.example.com": [PUBLIC, "10.0.0.7"],
              "evil.example.com": ["127.0.0.1"]})
    policy = EgressPolicy(allow=("https://*.example.com",))
    assert policy.check_url("https://api.example.com/v1/grade", "test") == (PUBLIC,)
    assert "mixed.example.com resolves to 10.0.0.7, which is a private address" in refused(
        policy, "https://mixed.example.com/")
    assert "resolves to 127.0.0.1, which is a loopback address" in refused(policy, "https://evil.example.com/")


def test_localhost_and_names_that_resolve_to_loopback_are_refused():
    assert "loopback name" in refused(EgressPolicy(allow=("http://localhost:8000",)), "http://localhost:8000/x")
    assert "loopback name" in refused(EgressPolicy(allow=("http://*.localhost",)), "http://app.localhost/")
    # the system resolver turns this decimal host into 127.0.0.1: the address is what is judged
    reason = refused(EgressPolicy(allow=("http://2130706433",)), "http://2130706433/")
    assert "resolves to 127.0.0.1, which is a loopback address" in reason
    assert EgressPolicy(allow=("http://localhost:8000",), allow_loopback=True).check_url(
        "http://localhost:8000/x", "test")


# -- the allow-list, schemes, userinfo ------------------------------------------------
def test_only_allow_listed_scheme_host_port_and_path_prefix_pass(resolver):
    resolver({"tools.example.com": [PUBLIC], "a.tools.example.com": [PUBLIC], "other.com": [PUBLIC]})
    policy = EgressPolicy(allow=("https://tools.example.com/agent", "http://*.tools.example.com:8080"))
    for url in ("https://tools.example.com/agent", "https://tools.example.com/agent/call?x=1",
                "https://TOOLS.example.com./agent/", "http://a.tools.example.com:8080/any"):
        assert policy.check_url(url, "test") == (PUBLIC,), url
    for url in ("https://other.com/agent", "http://tools.example.com/agent", "https://tools.example.com:8443/agent",
                "https://tools.example.com/agentx", "https://tools.example.com/", "http://tools.example.com:8080/",
                "http://a.tools.example.com/any"):
        assert "is not on the allow-list" in refused(policy, url), url
    assert "encoded" in refused(policy, "https://tools.example.com/agent/%2e%2e/admin")
    assert "is not on the allow-list" in refused(EgressPolicy(), "https://tools.example.com/agent")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://tools.example.com/", "gopher://127.0.0.1:6379/_INFO",
                                 "ws://tools.example.com/"])
def test_other_schemes_are_refused(url):
    policy = EgressPolicy(allow=("https://tools.example.com",), allow_loopback=True, allow_private=True)
    assert "is not http or https" in refused(policy, url)


def test_userinfo_is_refused_and_not_echoed(resolver):
    resolver({"tools.example.com": [PUBLIC], "evil.com": [PUBLIC]})
    policy = EgressPolicy(allow=("https://tools.example.com",))
    for url in ("https://user:s3cret@tools.example.com/", "https://tools.example.com@evil.com/"):
        with pytest.raises(EgressDenied) as info:
            policy.check_url(url, "endpoint grader 'g'")
        assert "userinfo" in info.value.reason and "s3cret" not in str(info.value)
        assert str(info.value).startswith("endpoint grader 'g': egress to ")


def test_bad_patterns_are_config_errors_and_the_trusted_policy_allows_everything():
    for pattern in ("tools.example.com", "ftp://x.com", "https://user@x.com", "https://x.*.com"):
        with pytest.raises(ValidationError):
            EgressPolicy(allow=(pattern,))
    for url in ("http://127.0.0.1:1/", "http://169.254.169.254/", "http://localhost/"):
        assert TRUSTED_EGRESS.check_url(url, "test") == ()
    assert TRUSTED_EGRESS.guard("http://127.0.0.1/", "test") is None  # the client's default transport, as before
    assert address_class(egress_module.ipaddress.ip_address(PUBLIC)) == "global"


# -- where URLs enter: refused before any connection -------------------------------------
def _endpoint_spec(url: str, **kw: Any):
    return parse_spec({"type": "endpoint", "name": "svc", "url": url + "/grade", "max_retries": 0, **kw})


def test_a_restrictive_policy_stops_an_endpoint_grader_before_it_connects():
    with CountingServer({"score": 0.5}) as server:
        with pytest.raises(EgressDenied, match="endpoint grader 'svc'.*loopback"):
            EndpointGrader(_endpoint_spec(server.url), egress=EgressPolicy(allow=(server.url,)))
        assert server.connections == 0
        open_policy = EgressPolicy(allow=(server.url,), allow_loopback=True)
        allowed = EndpointGrader(_endpoint_spec(server.url), egress=open_policy)
        assert allowed.grade("x", {}).reward == 0.5 and server.connections == 1  # the positive control


def test_the_connect_time_check_stops_dns_rebinding(resolver):
    resolver({"grader.test": [[PUBLIC], ["127.0.0.1"]]})  # public when the grader is built, loopback afterwards
    with CountingServer({"score": 1}) as server:
        url = f"http://grader.test:{server.port}"
        grader = EndpointGrader(_endpoint_spec(url), egress=EgressPolicy(allow=(url,)))
        grade = grader.grade("x", {})
        assert server.connections == 0
    assert grade.errors["other_error"] and "EgressDeniedAtConnect" in grade.error_messages[0]
    assert "resolves to 127.0.0.1" in grade.error_messages[0]


def test_plain_http_connects_to_the_address_it_vetted(resolver):
    looked_up = resolver({"grader.test": ["127.0.0.1"]})
    with CountingServer({"score": 1}) as server:
        url = f"http://grader.test:{server.port}"
        grader = EndpointGrader(_endpoint_spec(url), egress=EgressPolicy(allow=(url,), allow_loopback=True))
        assert grader.grade("x", {}).reward == 1.0
    assert server.requests[0]["headers"]["host"] == f"grader.test:{server.port}"  # the name stays in Host
    assert looked_up == ["grader.test", "grader.test"]  # when built, and again when the request was sent


def test_a_restrictive_policy_stops_a_judge_before_it_connects():
    spec = {"type": "score_model", "name": "judge", "model": "m", "input": [{"role": "user", "content": "x"}]}
    with CountingServer(lambda body: chat_completion('{"result": 0.25}')) as server:
        with pytest.raises(EgressDenied, match="judge.*loopback"):
            load_grader(spec, judge=JudgeConfig(base_url=server.url + "/v1", api_key="k",
                                                egress=EgressPolicy(allow=(server.url,))))
        assert server.connections == 0
        allowed = JudgeConfig(base_url=server.url + "/v1", api_key="k", max_retries=0,
                              egress=EgressPolicy(allow=(server.url,), allow_loopback=True))
        assert load_grader(spec, judge=allowed).grade("x", {}).reward == 0.25  # the positive control


def test_a_restrictive_policy_stops_an_http_tool_endpoint_before_it_connects():
    def answer(body: dict) -> dict:
        return {"type": "function_call_output", "call_id": body["call_id"], "output": "ok"}

    with CountingServer(answer) as server:
        config = EndpointToolConfig(name="lookup", server_url=server.url + "/tools")
        with pytest.raises(EgressDenied, match="HTTP tool endpoint.*loopback"):
            endpoint_clients([config], egress=EgressPolicy(allow=(server.url,)))
        assert server.connections == 0
        client = EndpointClient(config.server_url, egress=EgressPolicy(allow=(server.url,), allow_loopback=True))
        payload = {"type": "function_call", "name": "lookup", "arguments": "{}", "call_id": "call_1", "id": "fc_1",
                   "item": {}, "trace_id": "t"}
        assert run_sync(client.call(payload, max_retries=0), timeout=30)["output"] == "ok"  # the positive control
        run_sync(client.aclose(), timeout=30)


def test_a_restrictive_policy_stops_an_http_mcp_server_before_it_connects():
    with CountingServer() as server:
        with pytest.raises(EgressDenied, match="MCP server 'remote'.*loopback"):
            MCPToolset(MCPServerConfig(name="remote", url=server.url + "/mcp"),
                       egress=EgressPolicy(allow=(server.url,)))
        assert server.connections == 0


@pytest.fixture
def mcp_http_url():
    """The real MCP server of test_mcp_tools.py over streamable HTTP, served by uvicorn in a thread."""
    pytest.importorskip("mcp")
    import uvicorn
    from test_mcp_tools import build_server

    server = uvicorn.Server(uvicorn.Config(build_server().streamable_http_app(), port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/mcp"
    server.should_exit = True
    thread.join(10)


def test_an_allowed_http_mcp_server_works_through_the_connect_time_check(mcp_http_url):
    origin = mcp_http_url.rsplit("/", 1)[0]
    toolset = MCPToolset(MCPServerConfig(name="remote", url=mcp_http_url),
                         egress=EgressPolicy(allow=(origin,), allow_loopback=True))
    tools = {t.name: t for t in run_sync(toolset.open(), timeout=60)}
    try:
        ctx = ToolContext(trace_id="t", call_id="call_1", turn=0)
        assert run_sync(tools["add"].acall({"a": 2, "b": 3}, ctx), timeout=30) == "5"
    finally:
        run_sync(toolset.close(), timeout=30)


# -- the MCP registry -------------------------------------------------------------------
def test_only_registered_stdio_launches_are_admitted():
    registry = McpRegistry(servers={"files": McpCommand(command="npx", args=("-y", "@mcp/files", "/data"))})
    ok = MCPServerConfig(name="mine", command="npx", args=["-y", "@mcp/files", "/data"])
    assert registry.check_stdio(ok.name, ok.command, ok.args) == "files"
    MCPToolset(ok, registry=registry)  # admitted (nothing starts until open())
    for bad in (MCPServerConfig(name="x", command=sys.executable, args=["-c", "import os; os.system('id')"]),
                MCPServerConfig(name="x", command="npx", args=["-y", "@mcp/files", "/"]),
                MCPServerConfig(name="x", command="npx", args=["-y", "@mcp/files", "/data"],
                                env={"NODE_OPTIONS": "--require /tmp/x.js"})):
        with pytest.raises(McpCommandRefused, match="not in the operator's registry .registered: files."):
            MCPToolset(bad, registry=registry)
    with pytest.raises(McpCommandRefused):
        McpRegistry().resolve("files")
    assert registry.resolve("files").command == "npx"
    MCPToolset(MCPServerConfig(name="x", command=sys.executable, args=["-c", "pass"]))  # trusted by default


# -- submission limits ------------------------------------------------------------------
@pytest.mark.parametrize("check, limit", [
    ("check_upload_bytes", "max_upload_bytes"),
    ("check_rows_per_file", "max_rows_per_file"),
    ("check_request_bytes", "max_request_bytes"),
    ("check_n", "max_n"),
    ("check_max_tokens", "max_tokens"),
])
def test_each_submission_limit_refuses_one_past_it(check, limit):
    limits = SubmissionLimits()
    maximum = getattr(limits, limit)
    getattr(limits, check)(maximum)  # at the limit: fine
    with pytest.raises(LimitExceeded) as info:
        getattr(limits, check)(maximum + 1)
    assert (info.value.limit, info.value.maximum, info.value.value) == (limit, maximum, maximum + 1)
    assert f"the limit {limit} is {maximum}" in str(info.value)


def test_concurrent_jobs_per_key_and_documented_defaults():
    limits = SubmissionLimits(max_concurrent_jobs_per_key=3)
    limits.check_concurrent_jobs(2)  # the third job may start
    with pytest.raises(LimitExceeded) as info:
        limits.check_concurrent_jobs(3)
    assert (info.value.limit, info.value.maximum, info.value.value) == ("max_concurrent_jobs_per_key", 3, 4)
    defaults = SubmissionLimits()
    assert (defaults.max_upload_bytes, defaults.max_request_bytes, defaults.max_n) == (512 << 20, 8 << 20, 8)
    with pytest.raises(ValidationError):
        SubmissionLimits(max_n=0)
    with pytest.raises(ValidationError):
        SubmissionLimits(max_jobs=1)
