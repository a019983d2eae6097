"""LoRA hot-swap on ``agentrft serve``: vLLM's load/unload endpoints, per-request adapters, no mixed weights.

Two random LoRA adapters (non-zero B, so they change the outputs) are saved
with peft's ``save_pretrained`` under a temporary ``--lora-root``. A request
naming an adapter gets exactly what a local peft model with that adapter
samples; the served name keeps the base model's answer; paths outside the
root are refused; and requests racing a swap get one adapter's answer whole.
"""

from __future__ import annotations

import copy
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from click.testing import CliRunner

from agentrft.models.chat_format import get_chat_format
from agentrft.rollout.hf_sampler import HFSampler
from agentrft.rollout.openai_compat_sampler import OpenAICompatSampler
from agentrft.rollout.sampler import SamplingParams
from agentrft.serving import ServerSettings, create_app, serve_in_background
from agentrft.serving.adapters import enable_lora

PARAMS = SamplingParams(temperature=0, max_new_tokens=8)


def _lora(model, seed: int, targets: list[str]):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return peft_model.eval()


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory):
    """(lora root, outside folder, {name: local peft model}) with adapters a and b inside the root, c outside."""
    model, _ = tiny_model
    root, outside = tmp_path_factory.mktemp("lora-root"), tmp_path_factory.mktemp("elsewhere")
    local = {"a": _lora(model, 1, ["q_proj", "v_proj"]), "b": _lora(model, 2, ["q_proj", "gate_proj", "down_proj"])}
    for name, m in local.items():
        m.save_pretrained(root / "checkpoints" / name / "adapter")
    _lora(model, 3, ["q_proj"]).save_pretrained(outside / "c")
    (root / "escape").symlink_to(outside / "c")
    return root, outside, local


@pytest.fixture(scope="module")
def server(tiny_model, adapters):
    """(httpx client, remote samplers by name, local reference answers by name: base, a, b)."""
    model, tok = tiny_model
    root, _, local = adapters
    served = copy.deepcopy(model)  # peft injects its layers into the served model's modules
    app = create_app(HFSampler(served, pad_token_id=tok.pad_token_id), get_chat_format(tok, "hermes"),
                     ServerSettings(model_name="tiny", max_context=512))
    enable_lora(app, served, root)
    prompts = [tok.encode(t, add_special_tokens=False) for t in ("Hello there", "Count to three, slowly")]
    want = {"base": HFSampler(model, pad_token_id=tok.pad_token_id).generate(prompts, PARAMS)}
    for name, m in local.items():
        want[name] = HFSampler(m, pad_token_id=tok.pad_token_id).generate(prompts, PARAMS)
    with serve_in_background(app) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
        yield client, base_url, prompts, want


def _ids(completions) -> list[list[int]]:
    return [c.token_ids for c in completions]


def _load(client, name: str, path: str, **extra) -> httpx.Response:
    return client.post("/load_lora_adapter", json={"lora_name": name, "lora_path": path, **extra})


def test_load_use_and_unload_adapters(server, adapters):
    client, base_url, prompts, want = server
    root, _, _ = adapters
    assert _ids(want["a"]) != _ids(want["base"]) and _ids(want["b"]) != _ids(want["a"])  # they do differ

    r = _load(client, "a", "checkpoints/a/adapter")  # relative to --lora-root
    assert r.status_code == 200 and r.text == "Success: LoRA adapter 'a' added successfully."
    as_a = OpenAICompatSampler(base_url, "a")
    got = as_a.generate(prompts, PARAMS)
    assert _ids(got) == _ids(want["a"])
    for g, w in zip(got, want["a"]):
        assert g.logprobs == pytest.approx(w.logprobs, abs=1e-5)
    base = OpenAICompatSampler(base_url, "tiny")
    assert _ids(base.generate(prompts, PARAMS)) == _ids(want["base"])  # the served name: no adapter

    assert _load(client, "b", str(root / "checkpoints" / "b" / "adapter")).status_code == 200  # absolute, inside
    as_b = OpenAICompatSampler(base_url, "b")
    assert _ids(as_b.generate(prompts, PARAMS)) == _ids(want["b"])
    assert _ids(as_a.generate(prompts, PARAMS)) == _ids(want["a"])

    cards = client.get("/models").json()["data"]
    assert [c["id"] for c in cards] == ["tiny", "a", "b"]
    assert cards[1]["parent"] == "tiny" and cards[1]["root"].endswith("checkpoints/a/adapter")
    assert client.get("/models/b").json()["id"] == "b"

    r = client.post("/unload_lora_adapter", json={"lora_name": "a"})
    assert r.status_code == 200
    r = client.post("/completions", json={"model": "a", "prompt": prompts[0], "max_tokens": 2})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert client.post("/unload_lora_adapter", json={"lora_name": "a"}).status_code == 404
    assert [c["id"] for c in client.get("/models").json()["data"]] == ["tiny", "b"]
    assert _ids(as_b.generate(prompts, PARAMS)) == _ids(want["b"])
    assert client.post("/unload_lora_adapter", json={"lora_name": "b"}).status_code == 200
    assert _ids(base.generate(prompts, PARAMS)) == _ids(want["base"])


@pytest.mark.parametrize("path, match", [
    ("OUTSIDE/c", "outside this server's --lora-root"),
    ("../elsewhere/c", "outside this server's --lora-root"),
    ("escape", "outside this server's --lora-root"),  # a symlink inside the root that points out of it
    ("/etc", "outside this server's --lora-root"),
    ("checkpoints/nope", "not a LoRA adapter folder"),
    ("checkpoints", "not a LoRA adapter folder"),
])
def test_paths_outside_the_root_or_not_adapters_are_400(server, adapters, path, match):
    client, _, _, _ = server
    _, outside, _ = adapters
    path = path.replace("OUTSIDE", str(outside)).replace("../elsewhere", f"../{outside.name}")
    r = _load(client, "x", path)
    assert r.status_code == 400, r.text
    assert match in r.json()["error"]["message"]
    assert "x" not in [c["id"] for c in client.get("/models").json()["data"]]


def test_bad_load_requests(server):
    client, _, _, _ = server
    assert _load(client, "tiny", "checkpoints/a/adapter").status_code == 400  # the served name
    assert _load(client, "dup", "checkpoints/a/adapter").status_code == 200
    r = _load(client, "dup", "checkpoints/b/adapter")
    assert r.status_code == 400 and "has already been loaded" in r.json()["error"]["message"]
    assert client.post("/load_lora_adapter", json={"lora_name": "y"}).status_code == 400  # no lora_path
    assert client.post("/load_lora_adapter", content=b"[]").status_code == 400
    assert client.post("/unload_lora_adapter", json={"lora_name": "dup"}).status_code == 200


def test_without_enable_lora_the_endpoints_are_404(tiny_model):
    model, tok = tiny_model
    app = create_app(HFSampler(model, pad_token_id=tok.pad_token_id), get_chat_format(tok, "hermes"),
                     ServerSettings(model_name="tiny"))
    with serve_in_background(app) as base_url, httpx.Client(base_url=base_url) as client:
        r = _load(client, "a", "/tmp")
        assert r.status_code == 404 and "--enable-lora" in r.json()["error"]["message"]


def test_requests_racing_a_swap_get_one_adapters_answer_whole(server):
    """``x`` is swapped between adapters a and b (vLLM's load_inplace) while requests for ``x`` stream in."""
    client, base_url, prompts, want = server
    pure = [{tuple(a.token_ids), tuple(b.token_ids)} for a, b in zip(want["a"], want["b"])]  # per prompt
    assert _load(client, "x", "checkpoints/a/adapter").status_code == 200
    stop = threading.Event()

    def swap() -> int:
        k = 0
        while not stop.is_set():
            k += 1
            r = _load(client, "x", f"checkpoints/{'ab'[k % 2]}/adapter", load_inplace=True)
            assert r.status_code == 200, r.text
        return k

    def ask(_: int) -> list[tuple]:
        return [tuple(c.token_ids) for c in OpenAICompatSampler(base_url, "x", max_context=512).generate(prompts,
                                                                                                          PARAMS)]

    with ThreadPoolExecutor(5) as pool:
        swapper = pool.submit(swap)
        answers = list(pool.map(ask, range(24)))
        stop.set()
        swaps = swapper.result()
    assert swaps >= 2
    for answer in answers:  # each completion is one adapter's exact answer, never a blend
        assert all(ids in allowed for ids, allowed in zip(answer, pure))
    assert client.post("/unload_lora_adapter", json={"lora_name": "x"}).status_code == 200


def test_cli_needs_a_lora_root(tmp_path):
    from agentrft.cli.serve import serve_cmd

    r = CliRunner().invoke(serve_cmd, ["--enable-lora"])
    assert r.exit_code != 0 and "--enable-lora needs --lora-root" in r.output
    r = CliRunner().invoke(serve_cmd, ["--enable-lora", "--lora-root", str(tmp_path / "missing")])
    assert r.exit_code != 0 and "not a folder" in r.output
