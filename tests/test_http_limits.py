"""Hostile HTTP servers against tool endpoints, the endpoint grader and a score_model judge.

A real server on 127.0.0.1 (raw sockets, so it can misbehave in ways a
framework would not allow) answers every POST in one of these ways, picked by
the first part of the path:

* ``/endless`` -- a 200 whose body never ends (stopped by the server at
  :data:`STREAM_CAP_BYTES`, so a client that reads it all fails the memory
  assertion without hurting the machine);
* ``/trickle`` -- a 200 that sends one byte every 0.5 s (a per-read timeout never fires);
* ``/stall`` -- a 200 announcing ``Content-Length: 10**11``, then silence;
* ``/gzipbomb`` -- a 200 gzip body (though identity was asked for) that inflates to 150 MB.

Each call must end within its timeout + :data:`SLACK_S` with a typed error (a
truncated output for the tool), and the process's peak resident memory must
not grow by :data:`MAX_GROWTH_MB` (``VmHWM`` after resetting it through
``/proc/self/clear_refs``).
"""

from __future__ import annotations

import gzip
import json
import select
import socket
import socketserver
import threading
import time
import zlib

import httpx
import pytest

from agentrft.graders import JudgeConfig, load_grader
from agentrft.tools.base import ToolContext, ToolFailure, run_sync
from agentrft.tools.http_endpoint import EndpointClient, EndpointToolConfig, HttpEndpointTool
from agentrft.types import ToolErrorKind

from memory_probe import measure

TIMEOUT_S = 1.0
SLACK_S = 0.5  # the promised 0.2 s, plus room for a loaded 2-core machine
MAX_GROWTH_MB = 100.0
STREAM_CAP_BYTES = 200_000_000
TRICKLE_FOR_S = 10.0  # a client without a total deadline waits this long
PREFIXES = {  # what an endless body starts with, by the second part of the path
    "tool": b'{"type": "function_call_output", "call_id": "c1", "output": "',
    "garbage": b"",
    "grade": b'{"score": 1, "pad": "',
    "v1": b'{"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": [{"index": 0, '
          b'"finish_reason": "stop", "message": {"role": "assistant", "content": "',
}


class _Hostile(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(5)
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(65536)
            if not data:
                return
            head += data
        header_text, _, body = head.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in header_text.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            body += sock.recv(65536)
        path = header_text.split(b" ")[1].decode()
        mode, _, rest = path.strip("/").partition("/")
        prefix = PREFIXES.get(rest.split("/")[0], b"")
        try:
            getattr(self, f"_{mode}")(sock, prefix)
        except OSError:
            pass  # the client hung up: that is what a bounded client does

    def _endless(self, sock: socket.socket, prefix: bytes) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n" + prefix)
        chunk, sent = b"x" * 65536, len(prefix)
        while sent < STREAM_CAP_BYTES:
            sock.sendall(chunk)
            sent += len(chunk)

    def _trickle(self, sock: socket.socket, prefix: bytes) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n" + prefix)
        end = time.monotonic() + TRICKLE_FOR_S
        while time.monotonic() < end and not _hung_up(sock, 0.5):
            sock.sendall(b"x")

    def _stall(self, sock: socket.socket, prefix: bytes) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000000000\r\n\r\n")
        end = time.monotonic() + TRICKLE_FOR_S
        while time.monotonic() < end and not _hung_up(sock, 0.5):
            pass

    def _gzipbomb(self, sock: socket.socket, prefix: bytes) -> None:
        self._gzip(sock, GZIP_BOMB)

    def _gzipscore(self, sock: socket.socket, prefix: bytes) -> None:
        self._gzip(sock, gzip.compress(b'{"score": 0.5}'))

    def _gzip(self, sock: socket.socket, body: bytes) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)


def _hung_up(sock: socket.socket, wait_s: float) -> bool:
    readable, _, _ = select.select([sock], [], [], wait_s)
    return bool(readable) and not sock.recv(1, socket.MSG_PEEK)


def _gzip_bomb(size: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    out = [compressor.compress(PREFIXES["grade"])]
    block = b"x" * 1_000_000
    out += [compressor.compress(block) for _ in range(size // len(block))]
    return b"".join(out) + compressor.flush()


GZIP_BOMB = _gzip_bomb(150_000_000)


@pytest.fixture(scope="module")
def url():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Hostile)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def assert_bounded(seconds: float, growth_mb: float) -> None:
    assert seconds < TIMEOUT_S + SLACK_S, f"took {seconds:.2f}s"
    assert growth_mb < MAX_GROWTH_MB, f"grew the process by {growth_mb:.0f} MB"


# -- tool endpoints ----------------------------------------------------------------------------------
def call_tool(server_url: str):
    config = EndpointToolConfig(name="t", server_url=server_url, timeout_s=TIMEOUT_S, max_retries=0)
    client = EndpointClient.from_config(config)
    tool = HttpEndpointTool(config, {"type": "function", "function": {"name": "t"}}, client)
    try:
        return run_sync(tool.acall({}, ToolContext(trace_id="tr", call_id="c1", turn=0)), timeout=60)
    finally:
        run_sync(client.aclose(), timeout=10)


def test_tool_endless_reply_is_cut_at_the_cap_and_marked(url):
    outcome, seconds, growth = measure(lambda: call_tool(url + "/endless/tool"))
    assert isinstance(outcome, str), outcome
    assert outcome.startswith("xxxx") and outcome.endswith("bytes; the rest was not read]")
    assert len(outcome.encode()) <= 1_000_000
    assert_bounded(seconds, growth)


def test_tool_endless_garbage_is_a_malformed_reply(url):
    outcome, seconds, growth = measure(lambda: call_tool(url + "/endless/garbage"))
    assert isinstance(outcome, ToolFailure) and outcome.kind == ToolErrorKind.INFRASTRUCTURE, outcome
    assert "malformed reply" in outcome.message
    assert_bounded(seconds, growth)


@pytest.mark.parametrize("mode", ["trickle", "stall"])
def test_tool_slow_reply_times_out_at_the_total_deadline(url, mode):
    outcome, seconds, growth = measure(lambda: call_tool(f"{url}/{mode}/tool"))
    assert isinstance(outcome, ToolFailure) and outcome.kind == ToolErrorKind.INFRASTRUCTURE, outcome
    assert "timed out" in outcome.message
    assert_bounded(seconds, growth)


def test_tool_cut_reply_keeps_escaped_characters_whole():
    body = json.dumps({"type": "function_call_output", "call_id": "c1", "output": "é" * 100_000}).encode()  # \u00e9
    config = EndpointToolConfig(name="t", server_url="http://tools.test/", max_retries=0, max_output_bytes=1000)
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body))
    client = EndpointClient.from_config(config, transport=transport)
    tool = HttpEndpointTool(config, {"type": "function", "function": {"name": "t"}}, client)
    try:
        out = run_sync(tool.acall({}, ToolContext(trace_id="tr", call_id="c1", turn=0)), timeout=30)
    finally:
        run_sync(client.aclose(), timeout=10)
    text, marker = out.split("\n[truncated: the reply was over ")
    assert set(text) == {"é"} and len(out.encode()) <= 1000 and marker.endswith("the rest was not read]")


# -- the endpoint grader -------------------------------------------------------------------------
def grade_endpoint(server_url: str):
    spec = {"type": "endpoint", "name": "svc", "url": server_url, "timeout": TIMEOUT_S, "max_retries": 0}
    return load_grader(spec).grade("answer", {})


@pytest.mark.parametrize("mode, reason", [
    ("endless", "longer than"), ("trickle", "timed out"), ("stall", "timed out"), ("gzipbomb", "longer than"),
])
def test_endpoint_grader_flags_a_hostile_service_in_time(url, mode, reason):
    grade, seconds, growth = measure(lambda: grade_endpoint(f"{url}/{mode}/grade"))
    assert grade.errors["other_error"] and reason in grade.error_messages[0], grade.error_messages
    assert_bounded(seconds, growth)


def test_endpoint_grader_still_reads_a_small_gzip_answer(url):
    grade = grade_endpoint(f"{url}/gzipscore/grade")
    assert grade.reward == 0.5 and not grade.has_error


# -- score_model judges -----------------------------------------------------------------------------
SCORE = {
    "type": "score_model", "name": "judge", "model": "m", "range": [0, 1],
    "input": [{"role": "user", "content": "Grade {{sample.output_text}}"}],
}


@pytest.mark.parametrize("mode", ["endless", "trickle", "stall", "gzipbomb"])
def test_score_model_flags_a_hostile_judge_in_time(url, mode):
    judge = JudgeConfig(base_url=f"{url}/{mode}/v1", api_key="k", timeout_s=TIMEOUT_S, max_retries=0)
    grader = load_grader(SCORE, judge=judge)
    grade, seconds, growth = measure(lambda: grader.grade("answer", {}))
    assert grade.errors["model_grader_server_error"], grade.error_messages
    assert_bounded(seconds, growth)
