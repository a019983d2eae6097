"""The server under abuse: clients that go away, huge and malformed bodies, more requests than it can take.

A real uvicorn server on 127.0.0.1 (``serve_in_background``), the official
openai SDK, httpx or a raw socket as the client, and test samplers: a slow one
that sleeps per decode step and counts the tokens it generated, a gated one
that holds the worker until the test lets it go. Each test is bounded in time:
a server that kept decoding for an absent client, tokenised on the event loop,
read a body it should refuse, queued without limit or answered a malformed
body with a 500 fails it within seconds.
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from agentrft.models.chat_format import HermesChatFormat, get_chat_format
from agentrft.rollout.sampler import Completion, ScriptedSampler
from agentrft.serving import ServerSettings, create_app, serve_in_background


@pytest.fixture(scope="module")
def chat_format(tokenizer):
    return get_chat_format(tokenizer, "hermes")


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


class SlowSampler:
    """Emits ``token`` on every row, one decode step every ``step_s`` seconds, up to ``max_new_tokens``;
    ``generated`` counts the tokens it produced, whoever was listening."""

    def __init__(self, token: int, step_s: float = 0.05, max_context: int = 4096) -> None:
        self.token, self.step_s, self.max_context = token, step_s, max_context
        self.generated = 0

    def generate(self, prompts, params, on_token=None):
        rows: list[list[int]] = [[] for _ in prompts]
        for _ in range(params.max_new_tokens):
            time.sleep(self.step_s)
            for row, ids in enumerate(rows):
                ids.append(self.token)
                self.generated += 1
                if on_token is not None:
                    on_token(row, self.token)
        return [Completion(ids, [-0.5] * len(ids), "length") for ids in rows]

    def release(self) -> None:
        pass


class GatedSampler(ScriptedSampler):
    """The scripted sampler, holding the worker inside ``generate`` until ``gate`` is set."""

    def __init__(self, script) -> None:
        super().__init__(script)
        self.entered, self.gate = threading.Event(), threading.Event()

    def generate(self, prompts, params, on_token=None):
        self.entered.set()
        if not self.gate.wait(timeout=15):
            raise RuntimeError("the test never opened the gate")
        return super().generate(prompts, params, on_token)


def slow_server(chat_format, step_s: float = 0.05, **settings):
    sampler = SlowSampler(chat_format.tokenizer.encode(" tick", add_special_tokens=False)[0], step_s)
    app = create_app(sampler, chat_format, ServerSettings(model_name="m", max_context=4096, **settings))
    return app, sampler


def client_for(base_url: str, timeout: float = 10) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=timeout)


def settled(sampler: SlowSampler, quiet_s: float = 0.3) -> int:
    """The sampler's token count once it has stopped changing for ``quiet_s``."""
    before = -1
    while sampler.generated != before:
        before = sampler.generated
        time.sleep(quiet_s)
    return before


# -- clients that go away ------------------------------------------------------------------------------


def test_dropped_streams_stop_their_generation_and_the_next_request_runs_at_once(chat_format):
    app, sampler = slow_server(chat_format, max_batch_size=8, batch_window_s=0.3)
    with serve_in_background(app) as base_url:
        client = client_for(base_url)

        def drop_after_three_chunks(i: int) -> int:
            stream = client.chat.completions.create(model="m", messages=user(f"story {i}"), max_tokens=200,
                                                    stream=True)
            seen = 0
            for _ in stream:
                seen += 1
                if seen == 3:
                    break
            stream.close()  # the client goes away with ~197 tokens still to come
            return seen

        with ThreadPoolExecutor(16) as pool:
            assert list(pool.map(drop_after_three_chunks, range(16))) == [3] * 16
        start = time.monotonic()
        r = client_for(base_url, timeout=5).chat.completions.create(model="m", messages=user("next"), max_tokens=3)
        waited = time.monotonic() - start
        assert r.choices[0].message.content == " tick tick tick"
        assert waited < 2.0, f"the next request waited {waited:.1f} s behind abandoned streams"
        assert settled(sampler) < 16 * 200 // 4  # the abandoned rows stopped after a few tokens


def test_an_abandoned_plain_request_stops_its_generation(chat_format):
    app, sampler = slow_server(chat_format)
    with serve_in_background(app) as base_url:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
            httpx.post(f"{base_url}/chat/completions", timeout=0.5,
                       json={"model": "m", "messages": user("a long story"), "max_tokens": 200})
        start = time.monotonic()
        r = client_for(base_url, timeout=5).chat.completions.create(model="m", messages=user("next"), max_tokens=3)
        waited = time.monotonic() - start
        assert r.usage.completion_tokens == 3
        assert waited < 2.0, f"the next request waited {waited:.1f} s behind an abandoned one"
        assert settled(sampler) < 200 // 2


def test_a_batch_mate_of_dropped_streams_still_gets_its_whole_answer(chat_format):
    """Rows of clients that left are dropped from what is streamed; the batch decodes on for the one still
    listening, which gets every token (the batch stops early only once all its clients have left)."""
    app, sampler = slow_server(chat_format, step_s=0.02, max_batch_size=8, batch_window_s=0.3)
    with serve_in_background(app) as base_url:
        client = client_for(base_url)

        def ask(i: int) -> str:
            stream = client.chat.completions.create(model="m", messages=user(f"q{i}"), max_tokens=40, stream=True)
            text, chunks = "", 0
            for chunk in stream:
                chunks += 1
                if i > 0 and chunks == 3:
                    stream.close()
                    return "dropped"
                for c in chunk.choices:
                    text += c.delta.content or ""
            return text

        with ThreadPoolExecutor(3) as pool:
            got = list(pool.map(ask, range(3)))
    assert got == [" tick" * 40, "dropped", "dropped"]
    assert app.state.engine.stats["calls"] == 1  # one batch: the kept stream decoded alongside the dropped ones


# -- big bodies ------------------------------------------------------------------------------------------


class SlowToTokenise(HermesChatFormat):
    """The Hermes format, taking ``delay_s`` to render each prompt (a huge prompt on a slow tokenizer)."""

    delay_s = 2.0
    rendering = threading.Event()

    def prompt_tokens(self, messages, tools=None):
        self.rendering.set()
        time.sleep(self.delay_s)
        return super().prompt_tokens(messages, tools)


def test_health_answers_while_a_big_prompt_is_tokenised(tokenizer):
    fmt = SlowToTokenise(tokenizer)
    fmt.rendering.clear()
    app = create_app(ScriptedSampler([]), fmt, ServerSettings(model_name="m", max_context=64))
    with serve_in_background(app) as base_url:
        big = {"model": "m", "messages": user("word " * 400_000)}  # 2 MB, under the body limit
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, f"{base_url}/chat/completions", json=big, timeout=20)
            assert fmt.rendering.wait(timeout=10)
            start = time.monotonic()
            health = httpx.get(base_url.removesuffix("/v1") + "/health", timeout=5)
            took = time.monotonic() - start
            r = pending.result()
    assert health.json() == {"status": "ok"}
    assert took < 0.5, f"/health took {took:.2f} s while a prompt was being tokenised"
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def raw_request(base_url: str, head: str, body: bytes = b"", timeout: float = 5) -> tuple[int, dict, float]:
    """Send ``head`` (request line and headers) and ``body`` on a raw socket; (status, JSON body, seconds)."""
    host, port = base_url.removeprefix("http://").split("/")[0].split(":")
    start = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(head.encode() + b"\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _content_length(data):
            chunk = s.recv(65536)  # a server still waiting for the body times this out
            if not chunk:
                break
            data += chunk
    took = time.monotonic() - start
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1]), took


def _content_length(response: bytes) -> int:
    for line in response.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_a_body_over_the_limit_is_a_413_before_it_is_read(chat_format):
    app = create_app(ScriptedSampler([]), chat_format, ServerSettings(model_name="m", max_request_bytes=64 * 1024))
    with serve_in_background(app) as base_url:
        head = ("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Content-Length: 1073741824\r\n")  # 1 GiB announced; not one byte of it is sent
        status, body, took = raw_request(base_url, head)
        assert status == 413 and "64 KiB" in body["error"]["message"] and took < 2.0

        def chunks():  # no Content-Length: the server counts what it reads
            yield b'{"model": "m", "messages": [{"role": "user", "content": "'
            for _ in range(10):
                yield b"x" * 10_000
            yield b'"}]}'

        r = httpx.post(f"{base_url}/chat/completions", content=chunks(), timeout=10)
        assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"
        assert httpx.get(base_url.removesuffix("/v1") + "/health").json() == {"status": "ok"}


# -- more requests than the server takes -------------------------------------------------------------


def test_a_full_queue_is_a_429_and_requests_leave_nothing_behind(chat_format):
    answer = chat_format.tokenizer.encode("ok", add_special_tokens=False) + [chat_format.stop_token_ids[0]]
    sampler = GatedSampler([answer] * 3)
    app = create_app(sampler, chat_format, ServerSettings(model_name="m", max_context=4096, max_batch_size=1,
                                                            max_queued_requests=2))
    with serve_in_background(app) as base_url:
        client = client_for(base_url)
        ask = dict(model="m", messages=user("hi"))
        with ThreadPoolExecutor(3) as pool:
            try:
                running = pool.submit(client.chat.completions.create, **ask)
                assert sampler.entered.wait(timeout=5)  # the worker holds the first request
                waiting = [pool.submit(client.chat.completions.create, **ask) for _ in range(2)]
                deadline = time.monotonic() + 5
                while app.state.engine.queued < 2 and time.monotonic() < deadline:
                    time.sleep(0.02)
                with pytest.raises(openai.RateLimitError) as e:
                    client_for(base_url, timeout=5).chat.completions.create(**ask)
                assert e.value.status_code == 429 and "queue" in e.value.message
            finally:
                sampler.gate.set()
            answers = [f.result(timeout=10).choices[0].message.content for f in [running, *waiting]]
        assert answers == ["ok"] * 3
        gc.collect()
        jobs = [o for o in gc.get_objects() if type(o).__module__ == "agentrft.rollout.batching" and hasattr(o, "future")]
        assert jobs == []  # while the server runs on, no answered request's prompt or result is kept


def test_the_engine_drops_a_cancelled_waiting_job_and_frees_its_place():
    from agentrft.serving.engine import BatchingGenerator, QueueFull

    sampler = GatedSampler([[7, 99]] * 3)
    engine = BatchingGenerator(sampler, max_context=64, max_batch_size=1, max_queued=2)
    greedy = dict(n=1, max_new_tokens=4, temperature=0.0, top_p=1.0, seed=None, stop_token_ids=(99,))

    async def main():
        running = asyncio.ensure_future(engine.generate([1], **greedy))
        assert await asyncio.to_thread(sampler.entered.wait, 5)  # the worker holds the first job
        dropped, kept = engine.submit([2], **greedy), engine.submit([3], **greedy)
        with pytest.raises(QueueFull):
            engine.submit([4], **greedy)
        engine.cancel(dropped)
        assert engine.queued == 1  # its place is free at once, before the worker looks at it
        late = engine.submit([5], **greedy)
        sampler.gate.set()
        return await asyncio.gather(running, engine.result(kept), engine.result(late))

    engine.start()
    try:
        results = asyncio.run(main())
    finally:
        sampler.gate.set()
        engine.stop()
    assert sampler.calls == [[[1]], [[3]], [[5]]]  # the cancelled job never reached the sampler
    assert [r[0].token_ids for r in results] == [[7, 99]] * 3 and engine.queued == 0


# -- malformed bodies ------------------------------------------------------------------------------------


def _call(**function) -> dict:
    return {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                                   "function": function}]}


MALFORMED: list[tuple[str, bytes | dict]] = [
    ("nested 100k deep", b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ("nested object 100k deep", b'{"model": "m", "messages": [{"role": "user", "content": "hi", "x": '
     + b'{"a": ' * 100_000 + b"1" + b"}" * 100_000 + b"}]}"),
    ("not an object", [1, 2]),
    ("a message that is a string", {"messages": ["hi"]}),
    ("a message that is a list", {"messages": [["user", "hi"]]}),
    ("role a number", {"messages": [{"role": 3, "content": "hi"}]}),
    ("role a list", {"messages": [{"role": ["user"], "content": "hi"}]}),
    ("content a number", {"messages": [{"role": "user", "content": 42}]}),
    ("content an object", {"messages": [{"role": "user", "content": {"text": "hi"}}]}),
    ("content parts not text", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
    ("content part text not a string", {"messages": [{"role": "user", "content": [{"type": "text", "text": [1]}]}]}),
    ("content part a number", {"messages": [{"role": "user", "content": [7]}]}),
    ("name a number", {"messages": [{"role": "user", "content": "hi", "name": 5}]}),
    ("tool_calls a string", {"messages": [{"role": "assistant", "content": "", "tool_calls": "zzz"}]}),
    ("tool_calls an object", {"messages": [{"role": "assistant", "tool_calls": {"function": {"name": "f"}}}]}),
    ("tool_calls item a string", {"messages": [{"role": "assistant", "tool_calls": ["zzz"]}]}),
    ("tool_calls item without function", {"messages": [{"role": "assistant", "tool_calls": [{"id": "c1"}]}]}),
    ("function a string", {"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": "f"}]}]}),
    ("function name missing", {"messages": [_call(arguments="{}")]}),
    ("function name a number", {"messages": [_call(name=3, arguments="{}")]}),
    ("arguments a number", {"messages": [_call(name="f", arguments=5)]}),
    ("arguments a list", {"messages": [_call(name="f", arguments=[1])]}),
    ("arguments a JSON list", {"messages": [_call(name="f", arguments="[1, 2]")]}),
    ("arguments nested deep", {"messages": [_call(name="f", arguments='{"a": ' * 5000 + "1" + "}" * 5000)]}),
    ("tool_call_id a number", {"messages": [{"role": "tool", "content": "42", "tool_call_id": 7}]}),
    ("tools a string", {"tools": "zzz"}),
    ("tools item a string", {"tools": ["zzz"]}),
    ("tools function a string", {"tools": [{"type": "function", "function": "f"}]}),
    ("tools parameters a string", {"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}),
    ("tools name a number", {"tools": [{"type": "function", "function": {"name": 5}}]}),
    ("messages an object", {"messages": {"role": "user", "content": "hi"}}),
    ("model a number", {"model": 5}),
    ("huge n", {"n": 10**30}),
    ("negative max_tokens", {"max_tokens": -1}),
    ("temperature a string", {"temperature": "hot"}),
    ("stop a number", {"stop": 5}),
    ("stop_options a list", {"stream": True, "stream_options": [1]}),
    ("response_format a string", {"response_format": "json"}),
    ("tool_choice a number", {"tool_choice": 5}),
    ("invalid UTF-8", b'{"model": "m", "messages": [{"role": "user", "content": "\xff\xfe"}]}'),
]


def malformed_statuses(base_url: str) -> dict[str, tuple[int, str]]:
    """Each malformed body's status and error message; a healthy answer to a good request after each."""
    out = {}
    for name, body in MALFORMED:
        if isinstance(body, dict):
            body = {"model": "m", "messages": user("hi"), **body}
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = httpx.post(f"{base_url}/chat/completions", content=content, timeout=10,
                       headers={"content-type": "application/json"})
        error = r.json().get("error") or {}
        out[name] = (r.status_code, error.get("message", "") if error.get("type") == "invalid_request_error" else "")
        ok = httpx.post(f"{base_url}/chat/completions", timeout=10, json={"model": "m", "messages": user("hi")})
        assert ok.status_code == 200, name  # still serving
    return out


def test_malformed_bodies_are_4xx_errors_never_500s(chat_format):
    answer = chat_format.tokenizer.encode("fine", add_special_tokens=False) + [chat_format.stop_token_ids[0]]
    app = create_app(ScriptedSampler([answer] * 200), chat_format,
                     ServerSettings(model_name="m", max_context=4096))
    with serve_in_background(app) as base_url:
        statuses = malformed_statuses(base_url)
    wrong = {name: got for name, got in statuses.items()
             if not (400 <= got[0] < 500 and 0 < len(got[1]) < 2000)}
    assert not wrong, wrong  # each a 4xx with an OpenAI error object and a short message
