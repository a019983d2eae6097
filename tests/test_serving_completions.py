"""``POST /v1/completions`` on ``agentrft serve``: vLLM's token-id fields, in and out, over raw HTTP and the SDK."""

from __future__ import annotations

import re

import httpx
import pytest

from agentrft.models.chat_format import get_chat_format
from agentrft.rollout.hf_sampler import HFSampler
from agentrft.rollout.sampler import SamplingParams, ScriptedSampler
from agentrft.serving import ServerSettings, create_app, serve_in_background


@pytest.fixture(scope="module")
def server(tiny_model):
    """(httpx client on /v1, local twin sampler, tokenizer)."""
    model, tok = tiny_model
    app = create_app(HFSampler(model, pad_token_id=tok.pad_token_id), get_chat_format(tok, "hermes"),
                     ServerSettings(model_name="tiny", max_context=256))
    with serve_in_background(app) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
        yield client, HFSampler(model, pad_token_id=tok.pad_token_id, prefix_cache_tokens=0), tok


def test_token_ids_in_token_ids_and_logprobs_out_in_vllms_shape(server):
    client, twin, tok = server
    prompts = [tok.encode("Hello there", add_special_tokens=False), tok.encode("One two three four")]
    r = client.post("/completions", json={"model": "tiny", "prompt": prompts, "max_tokens": 6, "temperature": 0,
                                          "n": 2, "logprobs": 0, "return_token_ids": True,
                                          "return_tokens_as_token_ids": True, "ignore_eos": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == "tiny"
    refs = twin.generate(prompts, SamplingParams(temperature=0, max_new_tokens=6))
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]  # prompt_index * n + k
    for c in body["choices"]:
        ref, prompt = refs[c["index"] // 2], prompts[c["index"] // 2]
        assert c["token_ids"] == ref.token_ids and c["prompt_token_ids"] == prompt
        assert c["logprobs"]["tokens"] == [f"token_id:{t}" for t in ref.token_ids]
        assert c["logprobs"]["token_logprobs"] == pytest.approx(ref.logprobs, abs=1e-5)
        assert c["logprobs"]["top_logprobs"] == [{f"token_id:{t}": lp} for t, lp in
                                                  zip(ref.token_ids, c["logprobs"]["token_logprobs"])]
        assert c["text"] == tok.decode(ref.token_ids, skip_special_tokens=True)
        assert c["finish_reason"] == "length" and c["stop_reason"] is None
    assert body["usage"] == {"prompt_tokens": sum(map(len, prompts)), "completion_tokens": 24,
                             "total_tokens": sum(map(len, prompts)) + 24}


def test_text_prompts_and_the_openai_sdk(server):
    client, twin, tok = server
    import openai

    sdk = openai.OpenAI(base_url=str(client.base_url), api_key="x", max_retries=0)
    r = sdk.completions.create(model="tiny", prompt="Name a colour.", max_tokens=5, temperature=0, logprobs=0,
                               extra_body={"return_token_ids": True})
    (ref,) = twin.generate([tok.encode("Name a colour.")], SamplingParams(temperature=0, max_new_tokens=5))
    assert r.choices[0].model_extra["token_ids"] == ref.token_ids
    assert r.choices[0].logprobs.token_logprobs == pytest.approx(ref.logprobs, abs=1e-5)
    assert r.choices[0].logprobs.tokens == [tok.decode([t]) for t in ref.token_ids]


def test_stop_token_ids_and_eos(tokenizer):
    """The stop token is kept in token_ids and left out of the text; EOS stops unless ignore_eos (vLLM's default)."""
    chat_format = get_chat_format(tokenizer, "hermes")
    eos, stop = tokenizer.eos_token_id, 5
    app = create_app(ScriptedSampler([[30, 31, eos], [30, 31, eos], [40, stop]]), chat_format,
                     ServerSettings(model_name="s", max_context=1024))
    with serve_in_background(app) as base_url, httpx.Client(base_url=base_url) as client:
        def ask(**over) -> dict:
            body = {"model": "s", "prompt": [1, 2], "max_tokens": 8, "return_token_ids": True, **over}
            r = client.post("/completions", json=body)
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]

        c = ask()
        assert (c["token_ids"], c["finish_reason"], c["stop_reason"]) == ([30, 31, eos], "stop", None)
        assert c["text"] == tokenizer.decode([30, 31]) and c["logprobs"] is None and c["prompt_logprobs"] is None
        assert ask(ignore_eos=True)["finish_reason"] == "length"
        c = ask(ignore_eos=True, stop_token_ids=[stop])
        assert (c["token_ids"], c["finish_reason"], c["stop_reason"]) == ([40, stop], "stop", stop)


@pytest.mark.parametrize("change, status, match", [
    ({"model": "other"}, 404, "does not exist"),
    ({"logprobs": 2}, 400, "only logprobs: 0"),
    ({"stop": ["x"]}, 400, "stop_token_ids"),
    ({"stream": True}, 400, "stream"),
    ({"echo": True}, 400, "echo"),
    ({"presence_penalty": 0.5}, 400, "penalties"),
    ({"max_tokens": 300}, 400, "maximum context length is 256"),
    ({"prompt": []}, 400, "empty"),
    ({"prompt": [[1, 2], []]}, 400, r"prompt\[1\] is empty"),
    ({"prompt": [1, 10**9]}, 400, "outside the vocabulary"),
    ({"prompt": [-1]}, 400, "outside the vocabulary"),
    ({"prompt": {"a": 1}}, 400, "prompt"),
    ({"n": 99}, 400, "n: at most"),
    ({"temperature": -1}, 400, "temperature"),
    ({"no_such_field": 1}, 400, "Unrecognized request argument supplied: no_such_field"),
])
def test_refusals_are_openai_errors(server, change, status, match):
    client, _, _ = server
    r = client.post("/completions", json={"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 2, **change})
    assert r.status_code == status, r.text
    assert re.search(match, r.json()["error"]["message"])
    assert client.post("/completions", json={"model": "tiny", "prompt": [1, 2], "max_tokens": 1}).status_code == 200


def test_non_json_body_is_a_400(server):
    client, _, _ = server
    r = client.post("/completions", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


def test_models_list_gives_the_context_length(server):
    client, _, _ = server
    (card,) = client.get("/models").json()["data"]
    assert card["id"] == "tiny" and card["max_model_len"] == 256
    assert client.get("/models/tiny").json()["id"] == "tiny"
    assert client.get("/models/nope").status_code == 404
