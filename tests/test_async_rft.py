"""Asynchronous RFT against a real ``agentrft serve``, and importance weights in the loss.

The loss: per-token weights multiply each token's surrogate before aggregation (hand-computed on the
fixture of tests/test_losses.py); without weights the loss is what it was.

The runs: the tiny model on the toy environment with ``sampler.backend: openai_compat`` and
``rft.asynchronous``; the server serves the base weights with LoRA hot-swap (the fixture pattern of
tests/test_remote_sampler_training.py). Every trained rollout's staleness (the trainer's version at its
step minus the version that sampled it) is checked against ``rft.max_staleness``; a run stopped after a
checkpoint while the next step was prefetched resumes on exactly those rollouts (trace ids) and applies
each update once.
"""

from __future__ import annotations

import contextlib
import json
import time

import pytest
import torch

from agentrft.algo.importance import ISCorrection
from agentrft.algo.losses import LossConfig, policy_loss
from agentrft.config import load_config
from agentrft.errors import ConfigError
from agentrft.jobs.store import RunStore
from agentrft.models.loading import save_tiny_model
from agentrft.serving import serve_in_background
from agentrft.train import runner
from agentrft.train.async_rft import pending_path
from agentrft.train.rft import resolved_is_correction
from agentrft.train.runner import RunInterrupted, run_job
from agentrft.train.weight_sync import AdapterPush
from lora_support import lora_server_app

# -- importance weights in the loss (tests/test_losses.py's fixture) ----------------------------------------

MASK = torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
ADV = torch.tensor([1.0, -1.0])
WEIGHTS = torch.tensor([[9.0, 0.5, 2.0, 1.5], [float("nan"), 1.2, 1.25, 9.0]])  # junk off the mask


def logprobs() -> torch.Tensor:  # old logprobs 0: ratios [-, 1.5, 0.7, 1.0] and [-, 0.7, 1.5, -]
    return torch.log(torch.tensor([[0.3, 1.5, 0.7, 1.0], [5.0, 0.7, 1.5, 0.01]])).requires_grad_()


def test_importance_weights_multiply_each_tokens_surrogate():
    lp = logprobs()
    out = policy_loss(lp, torch.zeros(2, 4), ADV, MASK, LossConfig(loss="ppo_clip"), weights=WEIGHTS)
    # per token -min(rA, clip(r)A): row 0 [-1.2 (clipped), -0.7, -1.0], row 1 [0.8 (clipped), 1.5]; times w
    row0 = (0.5 * -1.2 + 2.0 * -0.7 + 1.5 * -1.0) / 3
    row1 = (1.2 * 0.8 + 1.25 * 1.5) / 2
    assert float(out.loss.detach()) == pytest.approx((row0 + row1) / 2, abs=1e-6)
    out.loss.backward()
    # d/dlogp of -w r A / n / B on the unclipped tokens; clipped ones have none
    want = torch.tensor([[0, 0, -2.0 * 0.7 / 3 / 2, -1.5 * 1.0 / 3 / 2], [0, 0, 1.25 * 1.5 / 2 / 2, 0]])
    assert torch.allclose(lp.grad, want, atol=1e-6)


def test_the_kl_term_is_not_weighted():
    ref = torch.log(torch.tensor([[1.0, 1.2, 0.9, 1.1], [1.0, 0.8, 1.0, 1.0]]))
    cfg, no_kl = LossConfig(loss="ppo_clip", beta=0.5), LossConfig(loss="ppo_clip")
    with_kl = policy_loss(logprobs(), torch.zeros(2, 4), ADV, MASK, cfg, ref_logprobs=ref, weights=WEIGHTS)
    without = policy_loss(logprobs(), torch.zeros(2, 4), ADV, MASK, no_kl, ref_logprobs=ref, weights=WEIGHTS)
    kl = policy_loss(logprobs(), torch.zeros(2, 4), torch.zeros(2), MASK, cfg, ref_logprobs=ref)  # A = 0
    assert with_kl.loss.item() == pytest.approx(without.loss.item() + kl.loss.item(), abs=1e-6)


def test_without_weights_the_loss_is_unchanged_bit_for_bit():
    a = policy_loss(logprobs(), torch.zeros(2, 4), ADV, MASK, LossConfig(loss="dapo"))
    b = policy_loss(logprobs(), torch.zeros(2, 4), ADV, MASK, LossConfig(loss="dapo"), weights=None)
    ones = policy_loss(logprobs(), torch.zeros(2, 4), ADV, MASK, LossConfig(loss="dapo"), weights=torch.ones(2, 4))
    assert torch.equal(a.loss, b.loss) and torch.equal(a.loss, ones.loss) and a.stats == b.stats
    hand = 0.5 * ((-1.2 - 0.7 - 1.0) / 3 + (0.8 + 1.5) / 2)
    ppo = policy_loss(logprobs(), torch.zeros(2, 4), ADV, MASK, LossConfig(loss="ppo_clip"))
    assert ppo.loss.item() == pytest.approx(hand, abs=1e-6)


def test_is_correction_defaults_to_token_truncate_only_when_another_engine_samples():
    local = load_config({"method": "rft", "data": {"env": "toy"}})
    remote = {"method": "rft", "data": {"env": "toy"},
              "sampler": {"backend": "openai_compat", "url": "http://127.0.0.1:1/v1", "model": "run"}}
    assert resolved_is_correction(local) is None  # the spine's loss: no weights
    assert resolved_is_correction(load_config(remote)) is ISCorrection.TOKEN_TRUNCATE
    assert resolved_is_correction(load_config({**remote, "rft": {"asynchronous": True}})) is ISCorrection.TOKEN_TRUNCATE
    assert resolved_is_correction(load_config({**remote, "rft": {"is_correction": "sequence_mask"}})) is \
        ISCorrection.SEQUENCE_MASK
    assert resolved_is_correction(load_config({**remote, "rft": {"is_correction": "off"}})) is None
    with pytest.raises(ConfigError, match="is_correction"):
        load_config({**remote, "rft": {"is_correction": "tokens"}})


# -- asynchronous runs against a real server ------------------------------------------------------------------

ADAPTER = "async-run"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def server(model_dir, tmp_path):
    """``(base_url, lora_root)``: ``agentrft serve`` over the base weights with LoRA hot-swap."""
    root = tmp_path / "root"
    root.mkdir()
    app = lora_server_app(model_dir, root)
    with contextlib.ExitStack() as stack:
        yield stack.enter_context(serve_in_background(app)), root


@pytest.fixture
def pushed(monkeypatch) -> list[int]:
    """The version of each successful push, in order."""
    seen: list[int] = []
    push = AdapterPush.push

    def recording(self, policy, version):
        out = push(self, policy, version)
        seen.append(version)
        return out

    monkeypatch.setattr(AdapterPush, "push", recording)
    return seen


def async_config(model_dir, out_dir, url, sync_dir, max_staleness: int, steps: int):
    return load_config({
        "method": "rft", "model": str(model_dir), "out_dir": str(out_dir), "data": {"env": "toy"},
        "lora": {"r": 4},
        "training": {"max_steps": steps, "batch_size": 2, "eval_samples": 0, "checkpoint_interval": 1,
                     "cpu_matmul": "mkl"},
        "rft": {"group_size": 4, "asynchronous": True, "max_staleness": max_staleness},
        "optim": {"learning_rate": 1e-2},
        "rollout": {"max_turns": 1, "max_new_tokens": 8, "temperature": 1.0},
        "sampler": {"backend": "openai_compat", "url": url, "model": ADAPTER, "sync_dir": str(sync_dir),
                    "timeout_s": 60}})


def trained_staleness(store: RunStore) -> dict[int, list[int]]:
    """Per step, the staleness of each rollout it trained on (``advantage`` set), asserted within the bound
    by the caller: the trainer's version at the step minus the version that sampled the rollout."""
    frame = store.metrics_frame("train")
    out: dict[int, list[int]] = {}
    for step, metrics in sorted(frame.items()):
        trainer = int(metrics["async/trainer_version"])
        out[step] = [trainer - t["policy_version"] for t in store.trajectories(step=step)
                     if t["advantage"] is not None]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("max_staleness", [1, 0])
def test_async_rollouts_stay_within_max_staleness(model_dir, server, pushed, tmp_path, max_staleness):
    base_url, root = server
    steps = 3 if max_staleness else 2
    cfg = async_config(model_dir, tmp_path / "run", base_url, root / "sync", max_staleness, steps=steps)
    result = run_job(cfg, log=lambda s: None)
    assert result.status == "completed"
    assert pushed == list(range(steps + 1))  # each update pushed once
    with RunStore(tmp_path / "run") as store:
        staleness = trained_staleness(store)
        frame = store.metrics_frame("train")
    assert sorted(staleness) == list(range(1, steps + 1)) and all(staleness.values())
    for step, lags in staleness.items():
        assert all(0 <= lag <= max_staleness for lag in lags), (step, lags)  # per trained rollout
        assert frame[step]["async/staleness_max"] == max(lags) and frame[step]["async/dropped_stale"] == 0
        assert frame[step]["async/trainer_version"] == step - 1
        assert 0 < frame[step]["is_weight_mean"] <= 2.0 and frame[step]["is_ratio_mean"] > 0  # cap 2
        assert 0 <= frame[step]["is_over_cap_fraction"] <= 1 and frame[step]["mismatch_kl"] >= 0
    if max_staleness == 1:  # step k + 1 was sampled while step k trained, by version k - 1
        assert max(lag for lags in staleness.values() for lag in lags) == 1
        assert frame[2]["policy_version"] == 0
    else:
        assert [frame[s]["policy_version"] for s in sorted(frame)] == [0, 1]
    assert not (tmp_path / "run" / "pending").exists() or not list((tmp_path / "run" / "pending").iterdir())


@pytest.mark.slow
def test_a_resumed_async_run_trains_on_the_prefetched_rollouts_and_repeats_no_update(
        model_dir, server, pushed, tmp_path, monkeypatch):
    base_url, root = server
    run_dir = tmp_path / "run"
    cfg = async_config(model_dir, run_dir, base_url, root / "sync", max_staleness=1, steps=3)
    save = runner.save_checkpoint
    prefetched: dict[str, list[str]] = {}

    def stop_after_checkpoint_1(run_dir_, step, *args, **kwargs):
        path = save(run_dir_, step, *args, **kwargs)
        if step == 1:  # stopped after the checkpoint, once step 2's rollouts are stored
            pending = pending_path(run_dir, 2)
            for _ in range(600):
                if pending.exists():
                    break
                time.sleep(0.05)
            prefetched["trace_ids"] = [t["trace_id"] for t in json.loads(pending.read_text())["trajectories"]]
            raise RunInterrupted("SIGTERM", 15)
        return path

    monkeypatch.setattr(runner, "save_checkpoint", stop_after_checkpoint_1)
    with pytest.raises(RunInterrupted):
        run_job(cfg, log=lambda s: None)
    monkeypatch.setattr(runner, "save_checkpoint", save)
    assert pending_path(run_dir, 2).exists()  # kept for the resume (no checkpoint covers it)
    assert pushed == [0, 1]

    pushed.clear()
    result = run_job(cfg, resume=True, log=lambda s: None)
    assert result.status == "completed" and result.steps == 3
    assert pushed == [1, 2, 3]  # the restored weights, then one push per update: 3 updates in all, none twice
    with RunStore(run_dir) as store:
        step2 = [t["trace_id"] for t in store.trajectories(step=2)]
        assert sorted(step2) == sorted(prefetched["trace_ids"])  # trained on what was prefetched, not resampled
        assert all(len(store.trajectories(step=s)) == 8 for s in (1, 2, 3))  # each step stored once
        for step, lags in trained_staleness(store).items():
            assert lags and all(0 <= lag <= 1 for lag in lags), (step, lags)
        frame = store.metrics_frame("train")
        assert frame[2]["async/trainer_version"] == 1 and frame[2]["async/wait_s"] < 1.0  # nothing sampled again
        assert sum(1 for s in frame if frame[s]["skipped"] == 0 and frame[s]["trained_rollouts"] > 0) == 3
    assert not list((run_dir / "pending").iterdir())  # covered by the last checkpoint
