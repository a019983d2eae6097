"""Policy, SFT and DPO losses against hand-computed values on tiny tensors.

The fixture batch (old logprobs 0, so each token's ratio is exp(logprob)):

    row 0, A = +1, mask [0, 1, 1, 1], ratios [-, 1.5, 0.7, 1.0]
    row 1, A = -1, mask [0, 1, 1, 0], ratios [-, 0.7, 1.5, -]

PPO-clip (eps 0.2), per token -min(rA, clip(r)A):
    row 0: 1.5 -> -1.2 (clipped), 0.7 -> -0.7, 1.0 -> -1.0
    row 1: 0.7 -> +0.8 (clipped), 1.5 -> +1.5
"""

from __future__ import annotations

import math

import pytest
import torch

from agentrft.algo.losses import (
    AGGREGATIONS,
    POLICY_LOSSES,
    Aggregation,
    LossConfig,
    PolicyLoss,
    dpo_loss,
    k3_kl,
    policy_loss,
    sft_loss,
)

MASK = torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
ADV = torch.tensor([1.0, -1.0])


def batch_logprobs() -> torch.Tensor:
    # masked positions hold junk that must never matter
    return torch.log(torch.tensor([[0.3, 1.5, 0.7, 1.0], [5.0, 0.7, 1.5, 0.01]])).requires_grad_()


OLD = torch.zeros(2, 4)


def test_registries_cover_every_enum_value():
    assert set(POLICY_LOSSES) == set(PolicyLoss)
    assert set(AGGREGATIONS) == set(Aggregation)


def test_loss_config_resolves_default_aggregation():
    assert LossConfig(loss=PolicyLoss.PPO_CLIP).aggregation is Aggregation.SEQ_MEAN_TOKEN_MEAN
    assert LossConfig(loss=PolicyLoss.DAPO).aggregation == "token_mean"
    assert LossConfig(loss="gspo").aggregation is Aggregation.SEQ_MEAN_TOKEN_MEAN
    assert LossConfig(loss="dapo", aggregation="seq_mean_token_sum_norm").aggregation is Aggregation.SEQ_MEAN_TOKEN_SUM_NORM
    with pytest.raises(ValueError):
        LossConfig(beta=-1.0)
    with pytest.raises(ValueError):
        LossConfig(aggregation="sum")


@pytest.mark.parametrize(
    ("aggregation", "max_tokens", "expected"),
    [
        ("token_mean", None, -0.12),  # (-1.2 - 0.7 - 1.0 + 0.8 + 1.5) / 5
        ("seq_mean_token_mean", None, 0.0916667),  # (-2.9/3 + 2.3/2) / 2
        ("seq_mean_token_sum_norm", None, -0.075),  # (-2.9/4 + 2.3/4) / 2, T = 4
        ("seq_mean_token_sum_norm", 10, -0.03),  # (-2.9/10 + 2.3/10) / 2
    ],
)
def test_ppo_clip_value_per_aggregation(aggregation, max_tokens, expected):
    cfg = LossConfig(loss=PolicyLoss.PPO_CLIP, aggregation=aggregation, max_tokens=max_tokens)
    out = policy_loss(batch_logprobs(), OLD, ADV, MASK, cfg)
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)


def test_ppo_clip_stats():
    out = policy_loss(batch_logprobs(), OLD, ADV, MASK, LossConfig(loss="ppo_clip"))
    assert out.stats["clip_fraction"] == pytest.approx(0.4)  # 2 of 5 sampled tokens
    assert out.stats["ratio_mean"] == pytest.approx(1.08)  # (1.5+0.7+1+0.7+1.5)/5
    # approx KL(old||new) per token r - 1 - log r: 1.5 -> 0.094535, 0.7 -> 0.056675, 1 -> 0
    assert out.stats["approx_kl"] == pytest.approx((2 * 0.094535 + 2 * 0.056675) / 5, abs=1e-6)
    assert "kl_ref" not in out.stats and "entropy" not in out.stats
    assert all(isinstance(v, float) for v in out.stats.values())


def test_ppo_clip_gradients_vanish_exactly_on_clipped_tokens():
    logp = batch_logprobs()
    policy_loss(logp, OLD, ADV, MASK, LossConfig(loss="ppo_clip", aggregation="token_mean")).loss.backward()
    # d/dlogp of -A r / 5 = -A r / 5: row0 0.7 -> -0.14, 1.0 -> -0.2; row1 1.5, A=-1 -> +0.3
    expected = torch.tensor([[0.0, 0.0, -0.14, -0.2], [0.0, 0.0, 0.3, 0.0]])
    assert torch.allclose(logp.grad, expected, atol=1e-6)


def test_clip_behaviour_positive_and_negative_advantages_ppo_vs_dapo():
    """A=+1 at ratio 1.25: PPO clips at 1.2, DAPO's clip-higher (1.28) does not.
    A=-1 at ratio 0.75: both clip at the shared lower bound 0.8."""
    logp = torch.log(torch.tensor([[1.0, 1.25], [1.0, 0.75]]))
    old = torch.zeros(2, 2)
    mask = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    adv = torch.tensor([1.0, -1.0])
    ppo = POLICY_LOSSES[PolicyLoss.PPO_CLIP](logp, old, adv, mask, LossConfig())
    dapo = POLICY_LOSSES[PolicyLoss.DAPO](logp, old, adv, mask, LossConfig())
    assert ppo.loss[:, 1].tolist() == pytest.approx([-1.2, 0.8])
    assert ppo.clipped[:, 1].tolist() == [True, True]
    assert dapo.loss[:, 1].tolist() == pytest.approx([-1.25, 0.8])
    assert dapo.clipped[:, 1].tolist() == [False, True]
    # ratio outside the clip in the direction that lowers the objective is kept (pessimistic min)
    low = POLICY_LOSSES[PolicyLoss.PPO_CLIP](torch.log(torch.tensor([[1.0, 0.5]])), torch.zeros(1, 2),
                                             torch.tensor([1.0]), torch.tensor([[0.0, 1.0]]), LossConfig())
    assert low.loss[0, 1].item() == pytest.approx(-0.5) and not low.clipped[0, 1]


def test_dapo_asymmetric_clip_token_mean_value():
    # row 0: 1.5 -> -1.28 (clip-higher), 0.7 -> -0.7, 1.0 -> -1.0 ; row 1: 0.7 -> +0.8, 1.5 -> +1.5
    out = policy_loss(batch_logprobs(), OLD, ADV, MASK, LossConfig(loss="dapo", clip_eps_low=0.2, clip_eps_high=0.28))
    assert out.loss.item() == pytest.approx(-0.136, abs=1e-6)  # (-2.98 + 2.3) / 5
    assert out.stats["clip_fraction"] == pytest.approx(0.4)


def test_gspo_sequence_ratio_clip_and_gradient():
    # row 0 log ratios [0.3, -0.1, 0.1] -> mean 0.1 -> s = 1.105171, A = +1 (inside clip)
    # row 1 log ratios [0.6, 0.2] -> mean 0.4 -> s = 1.491825, A = +2 (clipped at 1.28 -> 2.56)
    logp = torch.tensor([[9.0, 0.3, -0.1, 0.1], [-9.0, 0.6, 0.2, 7.0]], requires_grad=True)
    adv = torch.tensor([1.0, 2.0])
    cfg = LossConfig(loss="gspo", clip_eps_low=0.2, clip_eps_high=0.28)
    sur = POLICY_LOSSES[PolicyLoss.GSPO](logp, OLD, adv, MASK, cfg)
    assert torch.allclose(sur.ratio[0, 1:], torch.full((3,), 1.105171), atol=1e-6)
    assert torch.allclose(sur.ratio[1, 1:3], torch.full((2,), 1.491825), atol=1e-6)
    assert sur.clipped[0, 1:].tolist() == [False] * 3 and sur.clipped[1, 1:3].tolist() == [True] * 2
    out = policy_loss(logp, OLD, adv, MASK, cfg)
    assert out.loss.item() == pytest.approx((-1.105171 - 2.56) / 2, abs=1e-6)
    assert out.stats["clip_fraction"] == pytest.approx(0.4)  # 2 of 5 tokens, token-weighted
    assert out.stats["ratio_mean"] == pytest.approx((3 * 1.105171 + 2 * 1.491825) / 5, abs=1e-6)
    out.loss.backward()
    # row 0: d/dlogp_t of -A exp(mean) / B = -1.105171 / 3 / 2 on each sampled token; row 1 clipped -> 0
    g = -1.105171 / 6
    assert torch.allclose(logp.grad, torch.tensor([[0.0, g, g, g], [0.0, 0.0, 0.0, 0.0]]), atol=1e-6)


def test_gspo_rejects_per_token_advantages():
    with pytest.raises(ValueError, match="sequence-level"):
        policy_loss(batch_logprobs(), OLD, torch.ones(2, 4), MASK, LossConfig(loss="gspo"))


def test_per_token_advantages_broadcast_for_ppo():
    adv_bt = ADV[:, None].expand(2, 4).clone()
    a = policy_loss(batch_logprobs(), OLD, ADV, MASK, LossConfig()).loss
    b = policy_loss(batch_logprobs(), OLD, adv_bt, MASK, LossConfig()).loss
    assert a.item() == pytest.approx(b.item())


def test_k3_kl_zero_when_equal_and_hand_values():
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    assert torch.equal(k3_kl(logp, logp), torch.zeros(1, 3))
    # x = ref - logp: log 0.5 -> 0.5 + 0.693147 - 1 = 0.193147 ; 1 -> e - 2 = 0.718282
    kl = k3_kl(torch.zeros(1, 2), torch.tensor([[math.log(0.5), 1.0]]))
    assert torch.allclose(kl, torch.tensor([[0.193147, 0.718282]]), atol=1e-6)


def test_kl_term_added_with_beta():
    logp = torch.zeros(1, 3, requires_grad=True)  # ratio 1 against old 0; A = 0 -> surrogate 0
    ref = torch.tensor([[0.0, math.log(0.5), 1.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    cfg = LossConfig(loss="dapo", beta=0.1)
    out = policy_loss(logp, torch.zeros(1, 3), torch.zeros(1), mask, cfg, ref_logprobs=ref)
    # token mean of k3 over 2 sampled tokens: (0.193147 + 0.718282) / 2 = 0.455715
    assert out.stats["kl_ref"] == pytest.approx(0.455715, abs=1e-6)
    assert out.loss.item() == pytest.approx(0.1 * 0.455715, abs=1e-6)
    same = policy_loss(logp, torch.zeros(1, 3), torch.zeros(1), mask, cfg, ref_logprobs=logp.detach())
    assert same.stats["kl_ref"] == 0.0 and same.loss.item() == 0.0
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(logp, torch.zeros(1, 3), torch.zeros(1), mask, cfg)


def test_entropy_stat_is_masked_mean():
    ent = torch.tensor([[100.0, 1.0, 2.0, 3.0], [100.0, 4.0, 5.0, 100.0]])
    out = policy_loss(batch_logprobs(), OLD, ADV, MASK, LossConfig(), entropy=ent)
    assert out.stats["entropy"] == pytest.approx(3.0)  # (1+2+3+4+5)/5


@pytest.mark.parametrize("loss", list(PolicyLoss))
@pytest.mark.parametrize("aggregation", list(Aggregation))
def test_masked_positions_change_neither_loss_nor_grads(loss, aggregation):
    cfg = LossConfig(loss=loss, aggregation=aggregation, beta=0.05, clip_eps_low=0.2, clip_eps_high=0.28)
    ref = torch.tensor([[0.1, 0.2, -0.3, 0.0], [0.0, -0.2, 0.1, 0.3]])

    def run(junk: float, old_junk: float, ref_junk: float):
        logp = batch_logprobs().detach().clone()
        old, r = OLD.clone(), ref.clone()
        logp[0, 0], logp[1, 0], logp[1, 3] = junk, junk, junk
        old[1, 3], r[1, 3] = old_junk, ref_junk
        logp.requires_grad_()
        out = policy_loss(logp, old, ADV, MASK, cfg, ref_logprobs=r)
        out.loss.backward()
        return out, logp.grad

    base, base_grad = run(-0.5, 0.0, 0.0)
    for junk in (50.0, -1e4, float("nan"), float("-inf")):
        other, other_grad = run(junk, junk, junk)
        assert other.loss.item() == pytest.approx(base.loss.item(), abs=1e-7)
        assert torch.equal(other_grad, base_grad)
        assert other.stats == pytest.approx(base.stats)
    assert torch.equal(base_grad * (1 - MASK), torch.zeros(2, 4))


def test_sft_loss_on_logprobs_and_logits():
    logp = torch.tensor([[0.0, -1.0, -2.0], [0.0, -0.5, 99.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    assert sft_loss(logp, mask).item() == pytest.approx((1.0 + 2.0 + 0.5) / 3)
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    ids = torch.tensor([[1, 2, 3], [4, 0, 2]])
    naive = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # [2, 2]
    expected = -(naive[0, 0] + naive[0, 1] + naive[1, 0]) / 3
    assert sft_loss(logits, mask, input_ids=ids).item() == pytest.approx(expected.item(), abs=1e-6)
    with pytest.raises(ValueError):
        sft_loss(logits, mask)


def test_dpo_loss_value_and_stats():
    # pair 0: rewards 0.5*(-1+1.5)=0.25 vs 0.5*(-2+1.5)=-0.25, margin 0.5 -> log(1+e^-0.5) = 0.474077
    # pair 1: rewards 0.5*(-3+2)=-0.5 vs 0.5*(-1+2)=0.5, margin -1 -> log(1+e^1) = 1.313262
    pc = torch.tensor([-1.0, -3.0], requires_grad=True)
    loss, stats = dpo_loss(pc, torch.tensor([-2.0, -1.0]), torch.tensor([-1.5, -2.0]), torch.tensor([-1.5, -2.0]), beta=0.5)
    assert loss.item() == pytest.approx((0.474077 + 1.313262) / 2, abs=1e-6)
    assert stats == pytest.approx(
        {"reward_accuracy": 0.5, "reward_margin": -0.25, "chosen_reward": -0.125, "rejected_reward": 0.125}
    )
    loss.backward()
    # d/dpc = -beta * sigmoid(-margin) / B: pair 0 -0.5*0.377541/2, pair 1 -0.5*0.731059/2
    assert torch.allclose(pc.grad, torch.tensor([-0.094385, -0.182765]), atol=1e-6)
