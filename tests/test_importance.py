"""Truncated importance-sampling weights against hand-computed values on tiny tensors.

The fixture (cap 2): sampler logprobs 0, so each sampled token's ratio is exp(trainer logprob):

    row 0, mask [0, 1, 1, 1], ratios [-, 0.5, 3.0, 1.5]   product 2.25
    row 1, mask [0, 1, 1, 0], ratios [-, 1.2, 1.25, -]     product 1.5

Masked positions hold junk (inf, nan) that must never reach a weight.
"""

from __future__ import annotations

import math

import pytest
import torch

from agentrft.algo.importance import (
    LOG_RATIO_BOUND,
    ISCorrection,
    importance_stats,
    importance_weights,
    sampled_mask,
)

MASK = torch.tensor([[0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
SAMPLER = torch.tensor([[float("nan"), 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, float("-inf")]])


def trainer() -> torch.Tensor:
    return torch.log(torch.tensor([[7.0, 0.5, 3.0, 1.5], [float("inf"), 1.2, 1.25, 0.0]])).requires_grad_()


@pytest.mark.parametrize("mode, expected", [
    ("token_truncate", [[0, 0.5, 2.0, 1.5], [0, 1.2, 1.25, 0]]),
    ("token_mask", [[0, 0.5, 0.0, 1.5], [0, 1.2, 1.25, 0]]),
    ("sequence_truncate", [[0, 2.0, 2.0, 2.0], [0, 1.5, 1.5, 0]]),
    ("sequence_mask", [[0, 0.0, 0.0, 0.0], [0, 1.5, 1.5, 0]]),
])
def test_weights_by_hand(mode, expected):
    w = importance_weights(trainer(), SAMPLER, MASK, mode, cap=2.0)
    assert w.shape == (2, 4) and not w.requires_grad  # a constant in the gradient
    assert torch.allclose(w, torch.tensor(expected))


def test_a_higher_cap_keeps_the_ratios():
    w = importance_weights(trainer(), SAMPLER, MASK, ISCorrection.SEQUENCE_MASK, cap=3.0)
    assert torch.allclose(w, torch.tensor([[0, 2.25, 2.25, 2.25], [0, 1.5, 1.5, 0]]))


def test_equal_logprobs_give_weight_one_on_sampled_tokens():
    lp = torch.randn(2, 4)
    for mode in ISCorrection:
        assert torch.equal(importance_weights(lp, lp, MASK, mode), MASK)


def test_extreme_log_ratios_are_bounded_before_exp():
    big = torch.tensor([[0.0, 1000.0, -1000.0]])
    w = importance_weights(big, torch.zeros(1, 3), torch.tensor([[0.0, 1.0, 1.0]]), "token_truncate", cap=2.0)
    assert w[0].tolist() == pytest.approx([0.0, 2.0, math.exp(-LOG_RATIO_BOUND)], rel=1e-5)
    assert torch.isfinite(w).all()


def test_stats_by_hand():
    w = importance_weights(trainer(), SAMPLER, MASK, "token_truncate", cap=2.0)
    stats = importance_stats(trainer(), SAMPLER, MASK, w, cap=2.0)
    ratios = [0.5, 3.0, 1.5, 1.2, 1.25]
    assert stats["is_weight_mean"] == pytest.approx((0.5 + 2.0 + 1.5 + 1.2 + 1.25) / 5)
    assert stats["is_ratio_mean"] == pytest.approx(sum(ratios) / 5)
    assert stats["is_over_cap_fraction"] == pytest.approx(1 / 5)
    assert stats["mismatch_kl"] == pytest.approx(sum(r - 1 - math.log(r) for r in ratios) / 5)


def test_sampled_mask_reads_token_kinds_and_pads():
    kinds = [["prompt", "sampled", "env", "sampled"], ["prompt", "sampled"]]
    assert sampled_mask(kinds).tolist() == [[0, 1, 0, 1], [0, 1, 0, 0]]
    assert sampled_mask(kinds, length=3).tolist() == [[0, 1, 0], [0, 1, 0]]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        importance_weights(trainer(), SAMPLER, MASK, "token_truncate", cap=0.0)
    with pytest.raises(ValueError):
        importance_weights(trainer(), SAMPLER, MASK, "per_turn")
