"""SFT's step runs its demonstrations in length-sorted micro-batches under a token budget.

A batch padded to its longest row as one micro-batch held ~9 GB of activations for 8 short demonstrations
on the 135M model and ran 4x slower per token (bench/sft_throughput.py). These tests pin the fix: the split
respects the budget, the decoder never sees a larger micro-batch, the LM head runs on trained positions only,
and the update equals the one of a single unsplit pass within float rounding.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from agentrft.config import load_config
from agentrft.models.policy import build_policy
from agentrft.train import sft
from agentrft.train.demonstrations import demonstration_trajectory
from agentrft.train.optim import forward_positions, micro_batches
from agentrft.types import Trajectory

DEMOS = Path(__file__).resolve().parents[1] / "bench" / "function_calling" / "data" / "sft_train.jsonl"


def _traj(n_prompt: int, n_sampled: int) -> Trajectory:
    t = Trajectory(task_id=f"t{n_prompt}-{n_sampled}", messages=[])
    t.append_tokens([7] * n_prompt, "prompt")
    t.append_tokens([3] * n_sampled, "sampled", [0.0] * n_sampled)
    return t


def test_budgeted_micro_batches_bound_positions_and_padding():
    lengths = [300, 120, 880, 450, 460, 240, 700, 130, 125, 2000]
    trajs = [_traj(n - 20, 20) for n in lengths]
    budget = 1000
    chunks = micro_batches(trajs, 4, None, max_positions=budget)
    assert sorted(i for c in chunks for i in c) == list(range(len(trajs)))  # every row once
    for chunk in chunks:
        assert len(chunk) <= 4
        padded = len(chunk) * max(lengths[i] for i in chunk)
        assert padded <= budget or len(chunk) == 1  # a row longer than the budget runs alone
    positions, tokens = forward_positions(trajs, chunks, None)
    assert positions - tokens <= 0.05 * tokens  # sorted by length: little padding
    unbudgeted = forward_positions(trajs, micro_batches(trajs, 4, None), None)
    assert unbudgeted[0] - unbudgeted[1] > 5 * (positions - tokens)
    assert [len(c) for c in micro_batches(trajs, 4, None, max_positions=10**9)] == [4, 4, 2]  # rows still capped


def _context(tiny_model, micro_batch_size: int = 8):
    model, tok = copy.deepcopy(tiny_model[0]), tiny_model[1]
    cfg = load_config({"method": "sft", "model": "unused", "data": {"demonstrations_file": str(DEMOS)},
                       "lora": {"enabled": True, "r": 4, "alpha": 8},
                       "training": {"cpu_matmul": "mkl"},
                       "optim": {"micro_batch_size": micro_batch_size, "max_grad_norm": 1e9}})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the adapters' initial values
        policy = build_policy(cfg, model=model, tokenizer=tok)
    opt = torch.optim.SGD(policy.trainable_parameters(), lr=1.0)  # the update is minus the gradient
    return SimpleNamespace(cfg=cfg, policy=policy, optimizer=opt, scheduler=SimpleNamespace(step=lambda: None),
                           sampler=SimpleNamespace(release=lambda: None))


def _demonstrations(chat_format, n: int = 8) -> list[Trajectory]:
    rows = [json.loads(line) for line in DEMOS.read_text().splitlines()[:n]]
    return [demonstration_trajectory(r["messages"], r["tools"], chat_format, r["id"]) for r in rows]


def _step(ctx, batch, monkeypatch, budget: int):
    monkeypatch.setattr(sft, "MICRO_BATCH_POSITIONS", budget)
    before = [p.detach().clone() for p in ctx.policy.trainable_parameters()]
    metrics = sft.SFTMethod().step(ctx, batch, 1)
    return metrics, [p.detach() - b for p, b in zip(ctx.policy.trainable_parameters(), before)]


def test_sft_step_splits_by_tokens_and_reads_the_head_on_trained_positions_only(tiny_model, monkeypatch):
    ctx = _context(tiny_model)
    batch = _demonstrations(ctx.policy.chat_format)
    model = ctx.policy.model
    calls: list[tuple[int, int]] = []
    head_rows: list[int] = []
    decoder_hook = model.get_decoder().register_forward_pre_hook(
        lambda mod, args, kwargs: calls.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    head_hook = model.get_output_embeddings().register_forward_pre_hook(
        lambda mod, args: head_rows.append(args[0].shape[0]))
    try:
        metrics, _ = _step(ctx, batch, monkeypatch, sft.MICRO_BATCH_POSITIONS)
    finally:
        decoder_hook.remove()
        head_hook.remove()
    rows = [b for b, _ in calls]
    prefix_passes = 1 if metrics["shared_prefix_tokens"] else 0  # the system prompt and tools preamble, once
    assert prefix_passes and sum(rows) == len(batch) + prefix_passes  # every demonstration once
    assert all(b * t <= sft.MICRO_BATCH_POSITIONS for b, t in calls if b > 1)
    assert len(calls) > 2  # the 8 rows did not run as one micro-batch
    trained = sum(t.token_kinds[1:].count("sampled") for t in batch)
    assert sum(head_rows) == trained  # no [B, T, V] logits: the head saw the trained positions only
    padding = metrics["decoder_positions"] - metrics["decoder_tokens"]
    assert padding <= 0.1 * metrics["decoder_tokens"], metrics  # one padded batch of these rows: 40 %


def test_budgeted_sft_update_equals_one_unsplit_pass(tiny_model, monkeypatch):
    ctx_split, ctx_whole = _context(tiny_model), _context(tiny_model)
    batch = _demonstrations(ctx_split.policy.chat_format)
    split, delta_split = _step(ctx_split, batch, monkeypatch, 1024)
    whole, delta_whole = _step(ctx_whole, batch, monkeypatch, 10**9)
    assert split["decoder_positions"] < whole["decoder_positions"]  # the split one pads less
    assert split["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert any(d.abs().max() > 0 for d in delta_whole)
    for a, b in zip(delta_split, delta_whole):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
