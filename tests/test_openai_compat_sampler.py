"""The openai_compat sampler against a real ``agentrft serve`` app: the local sampler's tokens, over HTTP.

Greedy completions (ids, logprobs to 1e-5, finish reasons) equal the local
HFSampler's on the same prompts, batched, with stop tokens, and so does a
whole rollout's token record; seeded sampling reproduces. A server that is
down or answers garbage is a typed failure that the episode loop records.
"""

from __future__ import annotations

import json
import socket

import httpx
import pytest
from pydantic import ValidationError

from agentrft.envs.toy import env_spec
from agentrft.models.chat_format import get_chat_format
from agentrft.rollout.episode import RolloutConfig, run_episodes
from agentrft.rollout.hf_sampler import HFSampler
from agentrft.rollout.openai_compat_sampler import (OpenAICompatSampler, SamplerConfig, SamplerResponseError,
                                                    SamplerServerError, SamplerUnavailable, build_remote_sampler)
from agentrft.rollout.sampler import Sampler, SamplingParams, ScriptedSampler
from agentrft.serving import ServerSettings, create_app, serve_in_background


@pytest.fixture(scope="module")
def chat_format(tokenizer):
    return get_chat_format(tokenizer, "hermes")


@pytest.fixture(scope="module")
def served(tiny_model):
    """(remote sampler, local twin, app) over the tiny model."""
    model, tok = tiny_model
    app = create_app(HFSampler(model, pad_token_id=tok.pad_token_id, max_batch_size=8), get_chat_format(tok, "hermes"),
                     ServerSettings(model_name="tiny", batch_window_s=0.05))
    with serve_in_background(app) as base_url:
        remote = OpenAICompatSampler(base_url, "tiny", timeout_s=60)
        yield remote, HFSampler(model, pad_token_id=tok.pad_token_id, prefix_cache_tokens=0), app
        remote.close()


def _prompts(tokenizer) -> list[list[int]]:
    texts = ["Name a colour.", "What is 2 + 2? Answer briefly, please.", "Tell me about rivers and their stones"]
    return [tokenizer.encode(t, add_special_tokens=False) for t in texts]


def assert_same(got, want) -> None:
    assert [c.token_ids for c in got] == [c.token_ids for c in want]
    assert [c.finish_reason for c in got] == [c.finish_reason for c in want]
    for g, w in zip(got, want):
        assert g.logprobs == pytest.approx(w.logprobs, abs=1e-5)


def test_it_is_a_sampler_and_reads_the_context_length_from_the_server(served):
    remote, _, app = served
    assert isinstance(remote, Sampler)
    assert remote.max_context == app.state.max_context


def test_greedy_batch_equals_the_local_sampler(served, tokenizer):
    remote, local, _ = served
    prompts = _prompts(tokenizer)
    params = SamplingParams(temperature=0, max_new_tokens=12)
    got = remote.generate(prompts, params)
    assert_same(got, local.generate(prompts, params))
    assert all(c.finish_reason == "length" and len(c.token_ids) == 12 for c in got)
    assert_same([remote.generate([p], params)[0] for p in prompts], got)  # one at a time: the same


def test_stop_tokens_end_generation_and_are_kept(served, tokenizer):
    remote, local, _ = served
    prompts = _prompts(tokenizer)
    free = local.generate(prompts, SamplingParams(temperature=0, max_new_tokens=12))
    stop = free[0].token_ids[3]
    params = SamplingParams(temperature=0, max_new_tokens=12, stop_token_ids=(stop, 2))
    got = remote.generate(prompts, params)
    assert_same(got, local.generate(prompts, params))
    assert got[0].finish_reason == "stop" and got[0].token_ids[-1] == stop and len(got[0].token_ids) <= 4


def test_seeded_sampling_reproduces_and_matches_the_local_sampler(served, tokenizer):
    remote, local, _ = served
    prompt = _prompts(tokenizer)[1]
    params = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=10, seed=1234)
    first, second = remote.generate([prompt], params), remote.generate([prompt], params)
    assert_same(first, second)
    assert_same(first, local.generate([prompt], params))  # a seeded request runs alone on the server
    batch = remote.generate(_prompts(tokenizer), params)
    assert_same(batch, remote.generate(_prompts(tokenizer), params))


def test_on_token_sees_every_token_in_order(served, tokenizer):
    remote, _, _ = served
    seen: dict[int, list[int]] = {}
    got = remote.generate(_prompts(tokenizer), SamplingParams(temperature=0, max_new_tokens=5),
                          on_token=lambda row, t: seen.setdefault(row, []).append(t))
    assert [seen[i] for i in range(3)] == [c.token_ids for c in got]


def test_a_full_context_gives_an_empty_length_completion_without_a_request(tokenizer):
    def refuse(request):
        raise AssertionError("no request expected")

    sampler = OpenAICompatSampler("http://unused/v1", "m", max_context=8, transport=httpx.MockTransport(refuse))
    (c,) = sampler.generate([list(range(8))], SamplingParams(temperature=0, max_new_tokens=4))
    assert (c.token_ids, c.finish_reason) == ([], "length")


def test_an_episode_through_the_server_records_the_local_samplers_tokens(served, chat_format):
    remote, local, _ = served
    spec = env_spec()
    rows = spec.load_split("validation")[:3]
    config = RolloutConfig(temperature=0, max_new_tokens=16, max_turns=2)
    over_http = run_episodes(rows, spec.make_env, remote, chat_format, config)
    in_process = run_episodes(rows, spec.make_env, local, chat_format, config)
    for a, b in zip(over_http, in_process):
        assert not a.errors
        assert a.token_ids == b.token_ids and a.token_kinds == b.token_kinds
        assert [lp for lp in a.logprobs if lp is not None] == pytest.approx(
            [lp for lp in b.logprobs if lp is not None], abs=1e-5)
        assert "note" in chat_format.decode(a.token_ids)  # the tool schema was offered


def test_a_tool_calling_episode_through_the_server_equals_the_in_process_one(chat_format):
    """Multi-turn: the served (scripted) model calls the toy tool, reads its result, answers."""
    end = chat_format.stop_token_ids[0]
    call = chat_format.tokenizer.encode('<tool_call>\n{"name": "note", "arguments": {"text": "hi"}}\n</tool_call>',
                                        add_special_tokens=False) + [end]
    answer = chat_format.tokenizer.encode("Done.", add_special_tokens=False) + [end]
    spec = env_spec()
    rows = spec.load_split("validation")[:1]
    app = create_app(ScriptedSampler([call, answer]), chat_format, ServerSettings(model_name="scripted"))
    with serve_in_background(app) as base_url:
        remote = OpenAICompatSampler(base_url, "scripted", max_context=4096)
        (over_http,) = run_episodes(rows, spec.make_env, remote, chat_format, RolloutConfig(temperature=0))
    (in_process,) = run_episodes(rows, spec.make_env, ScriptedSampler([call, answer]), chat_format,
                                 RolloutConfig(temperature=0))
    assert over_http.turns == 2 and [(r.call.name, r.result) for r in over_http.tool_calls] == [("note", "noted")]
    assert over_http.token_ids == in_process.token_ids and over_http.token_kinds == in_process.token_kinds
    assert over_http.logprobs == in_process.logprobs


# -- failures -------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_server_that_is_down_is_a_recorded_sampler_failure(chat_format):
    remote = OpenAICompatSampler(f"http://127.0.0.1:{_closed_port()}/v1", "tiny", max_context=4096, timeout_s=5)
    with pytest.raises(SamplerUnavailable, match="cannot reach"):
        remote.generate([[1, 2, 3]], SamplingParams(temperature=0, max_new_tokens=4))
    spec = env_spec()
    (traj,) = run_episodes(spec.load_split("validation")[:1], spec.make_env, remote, chat_format,
                           RolloutConfig(temperature=0))
    assert traj.stop_reason.value == "infra_error"
    assert traj.errors[0].kind == "sampler" and traj.errors[0].message.startswith("SamplerUnavailable")
    with pytest.raises(SamplerUnavailable):  # no max_context: the model list cannot be read either
        OpenAICompatSampler(f"http://127.0.0.1:{_closed_port()}/v1", "tiny")


def _answering(body, status: int = 200) -> OpenAICompatSampler:
    def handler(request: httpx.Request) -> httpx.Response:
        content = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return httpx.Response(status, content=content)

    return OpenAICompatSampler("http://mock/v1", "m", max_context=100, transport=httpx.MockTransport(handler))


def _choice(index=0, **over) -> dict:
    c = {"index": index, "text": "", "finish_reason": "length", "token_ids": [5, 6],
         "logprobs": {"tokens": ["token_id:5", "token_id:6"], "token_logprobs": [-0.1, -0.2], "top_logprobs": None,
                      "text_offset": [0, 1]}}
    c.update(over)
    return c


@pytest.mark.parametrize("body, match", [
    (b"<html>oops</html>", "not JSON"),
    ({"choices": []}, "0 choices for 1 prompts"),
    ({"object": "text_completion"}, "no choices"),
    ({"choices": [_choice(index=3)]}, "index"),
    ({"choices": [_choice(logprobs=None)]}, "token_logprobs"),
    ({"choices": [_choice(token_ids=[5])]}, "1 token ids but 2 logprobs"),
    ({"choices": [_choice(token_ids=["a", "b"])]}, "not a list of integers"),
    ({"choices": [_choice(token_ids=None, logprobs={"tokens": ["a", "b"], "token_logprobs": [-1, -1]})]},
     "neither token_ids"),
    ({"choices": [_choice(finish_reason="abort")]}, "finish_reason"),
])
def test_a_malformed_response_is_a_clear_error(body, match):
    with pytest.raises(SamplerResponseError, match=match):
        _answering(body).generate([[1, 2]], SamplingParams(temperature=0, max_new_tokens=2))


def test_an_error_status_keeps_the_servers_message():
    sampler = _answering({"error": {"message": "The model 'm' does not exist", "type": "x"}}, status=404)
    with pytest.raises(SamplerServerError, match="HTTP 404: The model 'm' does not exist"):
        sampler.generate([[1, 2]], SamplingParams(temperature=0, max_new_tokens=2))


def test_older_vllm_token_id_strings_are_read_when_token_ids_are_absent():
    (c,) = _answering({"choices": [_choice(token_ids=None)]}).generate([[1]], SamplingParams(max_new_tokens=2))
    assert (c.token_ids, c.logprobs, c.finish_reason) == ([5, 6], [-0.1, -0.2], "length")


def test_the_request_uses_vllms_token_fields():
    sent = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        n = len(sent[-1]["prompt"])
        return httpx.Response(200, json={"choices": [_choice(index=i) for i in reversed(range(n))]})

    sampler = OpenAICompatSampler("http://mock/v1", "m", max_context=10, api_key="k",
                                  transport=httpx.MockTransport(handler))
    got = sampler.generate([[1, 2], [3], list(range(8))], SamplingParams(temperature=0.5, max_new_tokens=4,
                                                                         stop_token_ids=(9,)))
    assert len(got) == 3 and len(sent) == 2  # the long prompt has room for 2 tokens only: its own request
    body = sent[0]
    assert body["prompt"] == [[1, 2], [3]] and body["max_tokens"] == 4 and sent[1]["max_tokens"] == 2
    assert {k: body[k] for k in ("logprobs", "return_token_ids", "return_tokens_as_token_ids", "ignore_eos",
                                 "stop_token_ids", "temperature", "model")} == {
        "logprobs": 0, "return_token_ids": True, "return_tokens_as_token_ids": True, "ignore_eos": True,
        "stop_token_ids": [9], "temperature": 0.5, "model": "m"} and "seed" not in body

    # seeded: a request's seed seeds each of its prompts alike, so each prompt goes alone with its own seed
    # (row 0 keeps the call's): an RFT group's equal prompts must not get equal samples
    sent.clear()
    got = sampler.generate([[1, 2], [1, 2], [1, 2]], SamplingParams(temperature=0.5, max_new_tokens=4, seed=3))
    assert len(got) == 3 and all(len(b["prompt"]) == 1 for b in sent)
    seeds = sorted(b["seed"] for b in sent)
    assert len(set(seeds)) == 3 and 3 in seeds and all(0 <= x < 2**63 for x in seeds)


def test_sampler_config_section(monkeypatch):
    assert SamplerConfig().backend == "local"
    cfg = SamplerConfig(backend="openai_compat", url="http://127.0.0.1:1/v1", model="agent", api_key_env="MY_KEY",
                        max_context=512)
    with pytest.raises(ValidationError, match="needs sampler.url"):
        SamplerConfig(backend="vllm", model="x")
    with pytest.raises(ValidationError, match="only apply to a remote"):
        SamplerConfig(url="http://x/v1")
    with pytest.raises(ValidationError):
        SamplerConfig(backend="openai_compat", url="u", model="m", urll="typo")
    with pytest.raises(Exception, match="MY_KEY is not set"):
        monkeypatch.delenv("MY_KEY", raising=False)
        build_remote_sampler(cfg)
    monkeypatch.setenv("MY_KEY", "secret")
    sampler = build_remote_sampler(cfg)
    assert sampler.max_context == 512 and sampler._client.headers["authorization"] == "Bearer secret"
