"""The OpenAI-compatible server, driven by the official openai SDK against a real uvicorn server.

Parsing and formatting tests script the sampler (a random tiny model never
writes a well-formed tool call); generation tests use the real tiny model:
answers equal a direct sampler call, concurrent requests are batched and still
each get their own answer, seeds reproduce, usage counts the tokens. Streaming
(``stream: true``) adds up to the plain answer and arrives while decoding.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from agentrft.models.chat_format import HERMES_CHAT_TEMPLATE, HermesChatFormat, TemplateChatFormat, get_chat_format
from agentrft.rollout.episode import RolloutConfig, run_episodes
from agentrft.rollout.hf_sampler import HFSampler
from agentrft.rollout.sampler import SamplingParams, ScriptedSampler
from agentrft.serving import ServerSettings, create_app
from agentrft.tools.environment import Environment

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


TWO_CALLS = ('Checking both.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
             '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>')
BROKEN_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>'


@pytest.fixture(scope="module")
def chat_format(tokenizer):
    return get_chat_format(tokenizer, "hermes")


@pytest.fixture(scope="module")
def real(tiny_model, chat_format, openai_server):
    """(client, app, sampler twin) for the tiny model; the twin is a second sampler for reference answers."""
    model, tok = tiny_model
    app = create_app(HFSampler(model, pad_token_id=tok.pad_token_id, max_batch_size=8), chat_format,
                     ServerSettings(model_name="tiny", batch_window_s=0.2))
    with openai_server(app) as client:
        yield client, app, HFSampler(model, pad_token_id=tok.pad_token_id, prefix_cache_tokens=0)


def scripted_app(chat_format, texts: list[str], sampler_cls=ScriptedSampler, **settings):
    """An app whose 'model' answers ``texts`` in order (each closed with the end-of-turn token)."""
    ids = [chat_format.tokenizer.encode(t, add_special_tokens=False) + [chat_format.stop_token_ids[0]] for t in texts]
    sampler = sampler_cls(ids)
    settings = {"max_context": 4096, **settings}
    return create_app(sampler, chat_format, ServerSettings(model_name="scripted", **settings)), sampler


def user(text: str) -> list[dict]:
    return [{"role": "system", "content": "You are terse."}, {"role": "user", "content": text}]


# -- the real tiny model ------------------------------------------------------------------------


def test_models_list(real):
    client, _, _ = real
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"


def test_plain_completion_is_the_samplers_answer_and_usage_counts_tokens(real, chat_format):
    client, _, twin = real
    messages = user("Name a colour.")
    r = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=9)
    prompt = chat_format.prompt_tokens(messages)
    (ref,) = twin.generate([prompt], SamplingParams(temperature=0, max_new_tokens=9,
                                                    stop_token_ids=chat_format.stop_token_ids))
    body = ref.token_ids[:-1] if ref.finish_reason == "stop" else ref.token_ids
    assert r.choices[0].message.content == chat_format.decode(body)
    assert r.choices[0].finish_reason == ref.finish_reason
    assert r.choices[0].message.tool_calls is None
    assert r.usage.prompt_tokens == len(prompt)
    assert r.usage.completion_tokens == len(ref.token_ids)
    assert r.usage.total_tokens == len(prompt) + len(ref.token_ids)
    assert r.model == "tiny" and r.object == "chat.completion"


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(real):
    client, app, _ = real
    questions = [f"Question {i}: what is {i} + {i}?" * (1 + i % 3) for i in range(6)]

    def ask(i: int) -> tuple[str, int]:
        r = client.chat.completions.create(model="tiny", messages=user(questions[i]), temperature=0, max_tokens=6 + i)
        return r.choices[0].message.content, r.usage.completion_tokens

    sequential = [ask(i) for i in range(6)]
    calls_before = app.state.engine.stats["calls"]
    with ThreadPoolExecutor(6) as pool:
        concurrent = list(pool.map(ask, range(6)))
    stats = app.state.engine.stats
    assert concurrent == sequential
    assert [n for _, n in sequential] == [6 + i for i in range(6)]  # each cut to its own max_tokens
    assert stats["calls"] - calls_before < 6 and stats["largest_call"] > 1  # really batched


def test_seed_reproduces_sampling_and_n_gives_n_choices(real):
    client, _, _ = real

    def sample(seed: int | None, n: int = 1) -> list[str]:
        r = client.chat.completions.create(model="tiny", messages=user("Tell me a story."), temperature=1.0,
                                           seed=seed, max_tokens=8, n=n)
        assert len(r.choices) == n and [c.index for c in r.choices] == list(range(n))
        return [c.message.content for c in r.choices]

    alone = sample(7)
    assert alone == sample(7)
    assert alone != sample(8)
    three = sample(11, n=3)
    assert three == sample(11, n=3) and len(set(three)) == 3
    # a seeded request arriving with others is not batched with them: its draws stay its own
    with ThreadPoolExecutor(4) as pool:
        crowd = [pool.submit(sample, None), pool.submit(sample, 7), pool.submit(sample, None, 2)]
        assert crowd[1].result() == alone


def test_errors_are_openai_errors_and_the_server_keeps_serving(real):
    client, _, _ = real
    ok = dict(model="tiny", messages=user("hi"), max_tokens=2)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(**{**ok, "model": "gpt-4o"})
    assert e.value.code == "model_not_found" and "tiny" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**ok, temperature=5)
    assert e.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**ok, tools=[WEATHER_TOOL], tool_choice="required")
    assert e.value.param == "tool_choice" and "not supported" in e.value.message
    with pytest.raises(openai.BadRequestError, match="stream_options"):
        client.chat.completions.create(**ok, stream_options={"include_usage": True})  # without stream: true
    bad_requests = [
        dict(messages=[{"role": "wizard", "content": "hi"}]),
        dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
        dict(messages=[{"role": "tool", "content": "42"}]),  # no tool_call_id
        dict(messages=[{"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]),
        dict(messages=[]),
        dict(n=0), dict(max_tokens=0), dict(top_p=0), dict(max_tokens=100_000),
        dict(tools=[{"type": "function", "function": {"description": "no name"}}]),
        dict(extra_body={"best_of": 2}), dict(logprobs=True), dict(frequency_penalty=0.5),
    ]
    for change in bad_requests:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(**{**ok, **change})
        assert e.value.status_code == 400 and e.value.body and e.value.message, change
    r = client.chat.completions.create(**ok)  # still serving
    assert r.usage.completion_tokens == 2


def test_raw_http_errors_are_openai_error_json(real):
    import httpx

    client, _, _ = real
    base = str(client.base_url).rstrip("/")
    r = httpx.post(f"{base}/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.post(f"{base}/chat/completions", json=["a list"])
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]
    r = httpx.get(f"{base}/nowhere")
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(base.removesuffix("/v1") + "/health").json() == {"status": "ok"}


def test_prompt_longer_than_the_context_is_a_400(chat_format, openai_server):
    app, _ = scripted_app(chat_format, [], max_context=64)
    with openai_server(app) as client:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="scripted", messages=user("word " * 100))
    assert e.value.code == "context_length_exceeded" and "64" in e.value.message


# -- scripted answers: parsing and formatting -------------------------------------------------------


class WeatherEnv(Environment):
    def get_weather(self, city: str) -> str:
        """Current weather of a city.

        Args:
            city: the city
        """
        return f"sunny in {city}"


@pytest.mark.parametrize("format_name", ["hermes", "template"])
def test_tool_call_round_trip_renders_exactly_as_the_episode_loop(tokenizer, format_name, openai_server):
    """The second request (assistant tool_calls + tool result) reaches the sampler as the same token ids
    that the episode loop feeds the policy on its second turn (Hermes format, and a tokenizer template
    with tool support: the exported Hermes template)."""
    chat_format = (HermesChatFormat(tokenizer) if format_name == "hermes"
                   else TemplateChatFormat(tokenizer, HERMES_CHAT_TEMPLATE))
    call = {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
    turn1 = chat_format.assistant_tokens(call)
    turn2 = chat_format.assistant_tokens({"role": "assistant", "content": "It is sunny."})

    row = {"id": "w", "messages": user("Weather in Paris?")}
    episode_sampler = ScriptedSampler([turn1, turn2])
    (traj,) = run_episodes([row], lambda r: WeatherEnv(), episode_sampler, chat_format, RolloutConfig(temperature=0))
    assert traj.stop_reason.value == "answer" and traj.tool_calls[0].result == "sunny in Paris"
    tools = [WeatherEnv().tools()[0].schema()]

    server_sampler = ScriptedSampler([turn1, turn2])
    app = create_app(server_sampler, chat_format, ServerSettings(model_name="scripted", max_context=4096))
    with openai_server(app) as client:
        r1 = client.chat.completions.create(model="scripted", messages=row["messages"], tools=tools)
        choice = r1.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        (tc,) = choice.message.tool_calls
        assert tc.type == "function" and tc.function.name == "get_weather" and tc.id
        assert tc.function.arguments == '{"city": "Paris"}'
        # the client's loop: run the tool, send its result back
        messages = [*row["messages"], choice.message.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": tc.id, "content": "sunny in Paris"}]
        r2 = client.chat.completions.create(model="scripted", messages=messages, tools=tools)
    assert r2.choices[0].message.content == "It is sunny." and r2.choices[0].finish_reason == "stop"
    assert server_sampler.calls[0] == episode_sampler.calls[0]
    assert server_sampler.calls[1] == episode_sampler.calls[1]
    assert r2.usage.prompt_tokens == len(episode_sampler.calls[1][0])
    assert r2.usage.completion_tokens == len(turn2)


def weather_question() -> dict:
    return dict(model="scripted", messages=user("Oslo and Rome?"), tools=[WEATHER_TOOL])


def test_parallel_calls_with_content_and_malformed_calls(chat_format, openai_server):
    two, broken = TWO_CALLS, BROKEN_CALL
    app, _ = scripted_app(chat_format, [two, broken, two])
    with openai_server(app) as client:
        ask = weather_question()
        r = client.chat.completions.create(**ask)
        msg = r.choices[0].message
        assert msg.content == "Checking both." and r.choices[0].finish_reason == "tool_calls"
        assert [(c.function.name, c.function.arguments) for c in msg.tool_calls] == [
            ("get_weather", '{"city": "Oslo"}'), ("get_weather", '{"city": "Rome"}')]
        assert len({c.id for c in msg.tool_calls}) == 2
        r = client.chat.completions.create(**ask)  # malformed: plain content, not an error
        assert r.choices[0].message.content == broken and r.choices[0].message.tool_calls is None
        assert r.choices[0].finish_reason == "stop"
        r = client.chat.completions.create(**ask, tool_choice="none")  # not parsed when tools are off
        assert r.choices[0].message.content == two and r.choices[0].message.tool_calls is None


def test_stop_strings_cut_the_text_and_the_token_count(chat_format, openai_server):
    text = "Hello there. The end. More text."
    app, _ = scripted_app(chat_format, [text, text])
    with openai_server(app) as client:
        r = client.chat.completions.create(model="scripted", messages=user("hi"), stop=["end", "zzz"])
        r_full = client.chat.completions.create(model="scripted", messages=user("hi"))
    assert r.choices[0].message.content == "Hello there. The " and r.choices[0].finish_reason == "stop"
    ids = chat_format.tokenizer.encode(text, add_special_tokens=False)
    n = r.usage.completion_tokens
    assert "end" in chat_format.decode(ids[:n]) and "end" not in chat_format.decode(ids[: n - 1])
    assert r_full.usage.completion_tokens == len(ids) + 1  # + the end-of-turn token
    assert r_full.choices[0].message.content == text


def test_a_failing_sampler_is_a_500_and_the_server_keeps_serving(chat_format, openai_server):
    app, sampler = scripted_app(chat_format, ["fine"])
    with openai_server(app) as client:
        sampler.script.clear()  # the next call raises "ran out of scripted completions"
        with pytest.raises(openai.InternalServerError, match="ran out"):
            client.chat.completions.create(model="scripted", messages=user("hi"))
        sampler.script.append(chat_format.tokenizer.encode("ok", add_special_tokens=False))
        r = client.chat.completions.create(model="scripted", messages=user("hi"), max_tokens=5)
        assert r.choices[0].message.content == "ok" and r.choices[0].finish_reason == "length"


def test_serve_in_background_reports_a_server_that_cannot_start(chat_format):
    from agentrft.errors import AgentRFTError
    from agentrft.serving import serve_in_background

    app, _ = scripted_app(chat_format, ["hi"])
    with pytest.raises(AgentRFTError, match=r"did not start on 203\.0\.113\.1: .*(cannot assign|address)"):
        with serve_in_background(app, host="203.0.113.1", start_timeout_s=5):  # not an address of this machine
            raise AssertionError("a server bound to an address this machine does not have")


# -- stream: true ------------------------------------------------------------------------------


def collect(stream) -> dict:
    """Assemble a streamed response the way a client does: content, tool calls, finish reasons, usage."""
    out: dict = {"content": {}, "calls": {}, "finish": {}, "chunks": 0, "usage": None, "pieces": []}
    for chunk in stream:
        out["chunks"] += 1
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            out["usage"] = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                out["content"][c.index] = out["content"].get(c.index, "") + c.delta.content
                out["pieces"].append(c.delta.content)
            for call in c.delta.tool_calls or []:
                slot = out["calls"].setdefault(c.index, {}).setdefault(call.index, {"name": "", "arguments": ""})
                slot["id"] = call.id or slot.get("id")
                slot["name"] += call.function.name or ""
                slot["arguments"] += call.function.arguments or ""
            if c.finish_reason:
                out["finish"][c.index] = c.finish_reason
    return out


def test_a_streamed_greedy_answer_adds_up_to_the_plain_one(tiny_model, chat_format, openai_server):
    model, tok = tiny_model
    app = create_app(HFSampler(model, pad_token_id=tok.pad_token_id), chat_format, ServerSettings(model_name="tiny"))
    with openai_server(app) as client:
        ask = dict(model="tiny", messages=user("Name a colour."), temperature=0, max_tokens=12)
        plain = client.chat.completions.create(**ask)
        got = collect(client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    assert got["content"][0] == plain.choices[0].message.content
    assert got["finish"][0] == plain.choices[0].finish_reason
    assert len(got["pieces"]) > 1  # in pieces, not one block at the end
    assert got["usage"].completion_tokens == plain.usage.completion_tokens
    assert got["usage"].prompt_tokens == plain.usage.prompt_tokens


class GatedSampler(ScriptedSampler):
    """Emits its first token, then waits until the test has seen it arrive over HTTP before decoding on."""

    seen = threading.Event()

    def generate(self, prompts, params, on_token=None):
        def gated(row, token):  # the decode loop: blocked after the first token, whoever is listening
            if on_token is not None:
                on_token(row, token)
            if not self.seen.is_set() and not self.seen.wait(timeout=10):
                raise RuntimeError("the first token never reached the client while decoding")
        return super().generate(prompts, params, on_token=gated)


def test_tokens_reach_the_client_while_the_sampler_is_still_decoding(chat_format, openai_server):
    app, _ = scripted_app(chat_format, ["Sunny all week in Oslo."], sampler_cls=GatedSampler)
    GatedSampler.seen.clear()
    with openai_server(app) as client:
        stream = client.chat.completions.create(model="scripted", messages=user("Weather?"), stream=True)
        text = ""
        for chunk in stream:
            for c in chunk.choices:
                if c.delta.content:
                    text += c.delta.content
                    GatedSampler.seen.set()  # the sampler is blocked on this: only a real stream gets here
    assert text == "Sunny all week in Oslo."


def test_streamed_tool_calls_content_and_a_malformed_call(chat_format, openai_server):
    app, _ = scripted_app(chat_format, [TWO_CALLS, TWO_CALLS, BROKEN_CALL])
    with openai_server(app) as client:
        ask = weather_question()
        plain = client.chat.completions.create(**ask)
        got = collect(client.chat.completions.create(**ask, stream=True))
        assert all("<tool_call" not in p for p in got["pieces"])  # a call never leaks out as text
        assert got["content"][0] == plain.choices[0].message.content == "Checking both."
        assert got["finish"][0] == "tool_calls"
        calls = [got["calls"][0][k] for k in sorted(got["calls"][0])]
        assert [(c["name"], c["arguments"]) for c in calls] == [
            (c.function.name, c.function.arguments) for c in plain.choices[0].message.tool_calls]
        assert all(c["id"] for c in calls)
        got = collect(client.chat.completions.create(**ask, stream=True))  # malformed: the text, as content
    assert got["content"][0] == BROKEN_CALL and got["finish"][0] == "stop" and not got["calls"]


def test_streamed_stop_strings_never_leak_and_multibyte_characters_arrive_whole(chat_format, openai_server):
    text = "Hello there. The end. More text."
    emoji = "Café ☕ and 🦜 ok"
    app, _ = scripted_app(chat_format, [text, emoji])
    with openai_server(app) as client:
        got = collect(client.chat.completions.create(model="scripted", messages=user("hi"), stream=True,
                                                     stop=["end."]))
        assert got["content"][0] == "Hello there. The " and got["finish"][0] == "stop"
        # deltas cannot be taken back: the equality says no piece of "end." was ever sent
        got = collect(client.chat.completions.create(model="scripted", messages=user("hi"), stream=True))
    assert got["content"][0] == emoji and all("\ufffd" not in p for p in got["pieces"])


def test_n_streams_each_choice_under_its_index(chat_format, openai_server):
    app, _ = scripted_app(chat_format, ["first answer", "second, longer answer"])
    with openai_server(app) as client:
        got = collect(client.chat.completions.create(model="scripted", messages=user("hi"), n=2, stream=True))
    assert got["content"] == {0: "first answer", 1: "second, longer answer"}
    assert got["finish"] == {0: "stop", 1: "stop"}


def test_a_sampler_failure_mid_stream_is_an_error_event_and_the_server_keeps_serving(chat_format, openai_server):
    app, sampler = scripted_app(chat_format, ["fine"])
    with openai_server(app) as client:
        sampler.script.clear()
        with pytest.raises(openai.APIError, match="ran out"):
            collect(client.chat.completions.create(model="scripted", messages=user("hi"), stream=True))
        sampler.script.append(chat_format.tokenizer.encode("ok", add_special_tokens=False))
        got = collect(client.chat.completions.create(model="scripted", messages=user("hi"), stream=True, max_tokens=5))
    assert got["content"][0] == "ok" and got["finish"][0] == "length"


def test_batched_streams_each_get_only_their_own_tokens(chat_format, openai_server):
    answers = ["alpha beta gamma delta", "one two three four five six"]
    ids = [chat_format.tokenizer.encode(t, add_special_tokens=False) + [chat_format.stop_token_ids[0]] for t in answers]
    sampler = ScriptedSampler(ids)
    app = create_app(sampler, chat_format, ServerSettings(model_name="scripted", max_context=4096, batch_window_s=0.3))
    with openai_server(app) as client:
        def ask(q: str) -> str:
            return collect(client.chat.completions.create(model="scripted", messages=user(q), stream=True))["content"][0]

        with ThreadPoolExecutor(2) as pool:
            got = list(pool.map(ask, ["A?", "B?"]))
    assert [len(call) for call in sampler.calls] == [2]  # one batched call decoded both
    assert sorted(got) == sorted(answers)  # each stream is one whole answer: no tokens of the other


# -- a client that goes away -------------------------------------------------------------------


class SlowHFSampler(HFSampler):
    """The real sampler with its decode loop slowed down (a sleep per token); ``decoded`` counts the tokens."""

    decoded = 0

    def generate(self, prompts, params, on_token=None):
        def slow(row, token):  # inside HFSampler's decode loop
            self.decoded += 1
            time.sleep(0.02)
            if on_token is not None:
                on_token(row, token)  # the server's: raises once the client has gone, out of the decode loop

        return super().generate(prompts, params, on_token=slow)


def test_a_dropped_stream_stops_the_real_decode_loop_and_the_sampler_serves_on(tiny_model, chat_format,
                                                                                 openai_server):
    model, tok = tiny_model
    sampler = SlowHFSampler(model, pad_token_id=tok.pad_token_id)
    app = create_app(sampler, chat_format, ServerSettings(model_name="tiny"))
    with openai_server(app) as client:
        stream = client.chat.completions.create(model="tiny", messages=user("Tell me a story."), temperature=1.0,
                                                max_tokens=200, stream=True)
        for k, _ in enumerate(stream):
            if k == 3:
                break
        stream.close()
        decoded = -1
        while sampler.decoded != decoded:  # until the worker is idle again
            decoded = sampler.decoded
            time.sleep(0.3)
        ask = dict(model="tiny", messages=user("Name a colour."), temperature=0, max_tokens=9)
        r = client.chat.completions.create(**ask)
    assert decoded < 100  # the abandoned stream's 200 tokens were not all decoded
    ref_sampler = HFSampler(model, pad_token_id=tok.pad_token_id, prefix_cache_tokens=0)
    (ref,) = ref_sampler.generate([chat_format.prompt_tokens(ask["messages"])],
                                  SamplingParams(temperature=0, max_new_tokens=9,
                                                 stop_token_ids=chat_format.stop_token_ids))
    body = ref.token_ids[:-1] if ref.finish_reason == "stop" else ref.token_ids
    assert r.choices[0].message.content == chat_format.decode(body)  # the sampler is whole after the cancel
