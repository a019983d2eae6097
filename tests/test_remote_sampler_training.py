"""RFT against a real ``agentrft serve``: the server samples the trainer's adapter after every update.

The trainer runs the tiny model (a saved folder) on the toy environment with ``sampler.backend:
openai_compat``; the server serves the same base weights with LoRA hot-swap over a root that holds the
run's ``sampler.sync_dir``. After each push, a greedy completion through the server equals, token for token
(logprobs to 1e-4), the trainer's own policy's; each trajectory of step k records policy version k - 1; a
resumed run pushes its restored weights before its first rollout. A server that goes down between pushes
costs the rollouts it fails (infra failures, counted); one that cannot take a push stops the run.
"""

from __future__ import annotations

import contextlib
import copy
import socket

import httpx
import pytest

from agentrft.config import load_config
from agentrft.errors import ConfigError
from agentrft.jobs.store import RunStore
from agentrft.models.chat_format import get_chat_format
from agentrft.models.loading import load_model, save_tiny_model
from agentrft.rollout.hf_sampler import HFSampler
from agentrft.rollout.openai_compat_sampler import OpenAICompatSampler
from agentrft.rollout.sampler import SamplingParams
from agentrft.serving import serve_in_background
from agentrft.train import weight_sync
from agentrft.train.runner import run_job
from agentrft.train.weight_sync import AdapterPush, WeightSyncError
from lora_support import lora_server_app

GREEDY = SamplingParams(temperature=0, max_new_tokens=8)
ADAPTER = "toy-run"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def server(model_dir, tmp_path):
    """``(base_url, lora_root, stop)``: ``agentrft serve`` over the base weights with ``--enable-lora
    --lora-root tmp_path/root``; ``stop()`` takes it down (the test's way to make the server go away)."""
    root = tmp_path / "root"
    root.mkdir()
    app = lora_server_app(model_dir, root)
    with contextlib.ExitStack() as stack:
        base_url = stack.enter_context(serve_in_background(app))
        yield base_url, root, stack.close


def rft_config(model_dir, out_dir, url, sync_dir, **sections):
    cfg = {"method": "rft", "model": str(model_dir), "out_dir": str(out_dir), "data": {"env": "toy"},
           "lora": {"r": 4},
           "training": {"max_steps": 3, "batch_size": 2, "eval_interval": 3, "eval_samples": 2,
                        "checkpoint_interval": 1, "cpu_matmul": "mkl"},
           "rft": {"group_size": 4}, "optim": {"learning_rate": 1e-2},
           "rollout": {"max_turns": 1, "max_new_tokens": 8, "temperature": 1.0},
           "sampler": {"backend": "openai_compat", "url": url, "model": ADAPTER, "sync_dir": str(sync_dir),
                       "timeout_s": 60}}
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return load_config(cfg)


@pytest.fixture
def pushes(monkeypatch):
    """Each push as ``(version, policy)`` after it succeeded; ``hooks[version]`` runs before (``"before"``) or
    after (``"after"``) the push of that version."""
    seen: list[tuple[int, object]] = []
    hooks: dict[tuple[str, int], object] = {}
    push = AdapterPush.push

    def recording(self, policy, version):
        if ("before", version) in hooks:
            hooks["before", version]()
        out = push(self, policy, version)
        seen.append((version, policy))
        if ("after", version) in hooks:
            hooks["after", version](self, policy)
        return out

    monkeypatch.setattr(AdapterPush, "push", recording)
    monkeypatch.setattr(weight_sync, "RETRY_BASE_S", 0.01)
    return seen, hooks


def _prompts(tok) -> list[list[int]]:
    return [tok.encode(t, add_special_tokens=False) for t in ("Even numbers are", "Count to three, slowly")]


def _same_as_local(base_url: str, policy) -> list:
    """The server's greedy completions of two prompts under the run's adapter, checked against the policy's."""
    local = HFSampler(copy.deepcopy(policy.model).eval(), pad_token_id=policy.pad_token_id, prefix_cache_tokens=0)
    want = local.generate(_prompts(policy.tokenizer), GREEDY)
    remote = OpenAICompatSampler(base_url, ADAPTER, timeout_s=60)
    got = remote.generate(_prompts(policy.tokenizer), GREEDY)
    remote.close()
    assert [c.token_ids for c in got] == [c.token_ids for c in want]
    for g, w in zip(got, want):
        assert g.logprobs == pytest.approx(w.logprobs, abs=1e-4)
    return got


def test_the_server_samples_the_trainers_adapter_after_every_update_and_after_a_resume(
        model_dir, server, pushes, tmp_path):
    base_url, root, _ = server
    seen, hooks = pushes
    answers = {}
    for v in range(5):
        hooks["after", v] = lambda sync, policy, v=v: answers.__setitem__(v, _same_as_local(base_url, policy))
    cfg = rft_config(model_dir, tmp_path / "run", base_url, root / "sync")
    result = run_job(cfg, log=lambda s: None)
    assert result.status == "completed"
    assert [v for v, _ in seen] == [0, 1, 2, 3]  # before the first rollout, then after each update
    assert answers[3][0].logprobs != pytest.approx(answers[0][0].logprobs, abs=1e-4)  # the adapter did change
    assert len(list((root / "sync").iterdir())) == 1  # earlier pushes' folders are pruned

    with RunStore(tmp_path / "run") as store:
        frame = store.metrics_frame("train")
        assert [frame[s]["policy_version"] for s in sorted(frame)] == [0.0, 1.0, 2.0]
        assert all(frame[s]["trained_rollouts"] > 0 and frame[s]["weight_sync_s"] > 0 for s in frame)
        for step in (1, 2, 3):
            versions = {t["policy_version"] for t in store.trajectories(step=step)}
            assert versions == {step - 1}, (step, versions)
        assert {t["policy_version"] for t in store.trajectories(split="validation")} == {3}
        assert any(e["kind"] == "weight_sync" for e in store.events())

    # A resume (here after the server lost the adapter, as a restarted one would) pushes the restored weights
    # before its first rollout.
    assert httpx.post(f"{base_url}/unload_lora_adapter", json={"lora_name": ADAPTER}).status_code == 200
    seen.clear()
    resumed = cfg.model_copy(update={"training": cfg.training.model_copy(update={"max_steps": 4})})
    run_job(resumed, resume=True, allow_config_change=True, log=lambda s: None)
    assert [v for v, _ in seen] == [3, 4]
    with RunStore(tmp_path / "run") as store:
        assert {t["policy_version"] for t in store.trajectories(step=4)} == {3}


def test_a_server_that_goes_down_costs_the_rollouts_not_the_run(model_dir, server, pushes, tmp_path):
    base_url, root, stop = server
    _, hooks = pushes
    hooks["after", 1] = lambda sync, policy: stop()  # down after step 1's update was pushed
    cfg = rft_config(model_dir, tmp_path / "run", base_url, root / "sync",
                     training={"max_steps": 2, "eval_samples": 0})
    result = run_job(cfg, log=lambda s: None)
    assert result.status == "completed" and result.steps == 2
    with RunStore(tmp_path / "run") as store:
        frame = store.metrics_frame("train")
        assert frame[1]["infra_failures"] == 0 and frame[2]["infra_failures"] == 8
        assert frame[2]["trained_rollouts"] == 0 and frame[2]["no_signal"] == 1.0
        failed = store.trajectories(step=2)
        assert len(failed) == 8 and {t["stop_reason"] for t in failed} == {"infra_error"}
        assert {e["kind"] for t in failed for e in t["errors"]} == {"sampler"}
        assert {t["policy_version"] for t in failed} == {1}


def test_a_push_the_server_cannot_take_stops_the_run(model_dir, server, pushes, tmp_path):
    base_url, root, stop = server
    _, hooks = pushes
    hooks["before", 1] = stop  # the server is gone when step 1's update is to be pushed
    cfg = rft_config(model_dir, tmp_path / "run", base_url, root / "sync",
                     sampler={"sync_attempts": 2}, training={"max_steps": 3})
    with pytest.raises(WeightSyncError, match=r"cannot push .*version 1.*\(2 tries\).*--resume"):
        run_job(cfg, log=lambda s: None)
    with RunStore(tmp_path / "run") as store:
        run = store.get_run()
        assert run["status"] == "failed" and "cannot push" in run["message"]
        assert any(e["kind"] == "weight_sync_failed" for e in store.events())
        assert not store.trajectories(step=2)  # no step sampled the stale weights


def test_a_push_outside_the_servers_lora_root_is_refused_at_start(model_dir, server, pushes, tmp_path):
    base_url, _, _ = server
    cfg = rft_config(model_dir, tmp_path / "run", base_url, tmp_path / "elsewhere")
    with pytest.raises(WeightSyncError, match="outside this server's --lora-root.*sampler.sync_dir inside"):
        run_job(cfg, log=lambda s: None)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = rft_config(model_dir, tmp_path / "run2", f"http://127.0.0.1:{port}/v1", tmp_path / "sync",
                     sampler={"sync_attempts": 1})
    with pytest.raises(WeightSyncError, match="cannot reach the server"):
        run_job(cfg, log=lambda s: None)


@pytest.mark.parametrize("change, match", [
    ({"lora": {"enabled": False}}, "needs lora.enabled: true.*full weights is not implemented"),
    ({"sampler": {"backend": "vllm", "url": None}}, "needs sampler.url and sampler.model"),
    ({"sampler": {"backend": "local", "sync_dir": "s"}}, "only apply to a remote backend"),
    ({"method": "sft", "data": {"env": "toy", "demonstrations": "oracle"}, "training": {"eval_samples": 0}},
     "samples only for its periodic eval"),
])
def test_remote_sampler_config_combinations(change, match):
    cfg = {"method": "rft", "data": {"env": "toy"},
           "sampler": {"backend": "openai_compat", "url": "http://127.0.0.1:1/v1", "model": "run"}}
    for key, value in change.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and key in cfg else value
    with pytest.raises(ConfigError, match=match):
        load_config(cfg)


def test_chat_completions_sample_with_a_loaded_adapter(server, model_dir, tmp_path):
    """``model: <adapter>`` on /v1/chat/completions samples with that adapter, answered under its name."""
    import torch
    from peft import LoraConfig, get_peft_model

    base_url, root, _ = server
    model, tok = load_model(str(model_dir))
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    peft_model.save_pretrained(root / "a")
    assert httpx.post(f"{base_url}/load_lora_adapter", json={"lora_name": "a", "lora_path": "a"}).status_code == 200

    messages = [{"role": "user", "content": "Say something"}]
    prompt = get_chat_format(tok, "hermes").prompt_tokens(messages, None)

    def chat(name: str) -> httpx.Response:
        return httpx.post(f"{base_url}/chat/completions", timeout=60,
                          json={"model": name, "messages": messages, "temperature": 0, "max_tokens": 8})

    want = HFSampler(peft_model.eval(), pad_token_id=tok.pad_token_id).generate([prompt], GREEDY)[0]
    base = HFSampler(load_model(str(model_dir))[0], pad_token_id=tok.pad_token_id).generate([prompt], GREEDY)[0]
    assert want.token_ids != base.token_ids
    def text(r) -> str:
        return (r.json()["choices"][0]["message"]["content"] or "").strip()

    r = chat("a")
    assert r.status_code == 200 and r.json()["model"] == "a"
    assert text(r) == tok.decode(want.token_ids, skip_special_tokens=True).strip()
    assert text(chat("base")) == tok.decode(base.token_ids, skip_special_tokens=True).strip()
    assert chat("nope").status_code == 404
