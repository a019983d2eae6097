"""Group advantages against hand-computed values (GRPO z-score, Dr.GRPO mean, RLOO)."""

from __future__ import annotations

import pytest
import torch

from agentrft.algo.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageEstimator,
    compute_advantages,
    discounted_turn_returns,
    group_mean,
    group_zscore,
    leave_one_out,
    turn_advantages,
)


def test_group_zscore_uses_sample_std():
    # mean 0.5; Bessel std = sqrt(4 * 0.25 / 3) = 0.577350; 0.5 / 0.577350 = 0.866025
    adv = group_zscore(torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert torch.allclose(adv, torch.tensor([0.866025, -0.866025, -0.866025, 0.866025]), atol=1e-5)


def test_group_zscore_batched_over_last_dim():
    # row 1: [2, 4, 9]: mean 5, std = sqrt((9 + 1 + 16) / 2) = sqrt(13) = 3.605551
    adv = group_zscore(torch.tensor([[1.0, 0.0, 0.5], [2.0, 4.0, 9.0]]))
    assert adv.shape == (2, 3)
    assert torch.allclose(adv[0], torch.tensor([1.0, -1.0, 0.0]), atol=1e-5)  # std 0.5
    assert torch.allclose(adv[1], torch.tensor([-0.832050, -0.277350, 1.109400]), atol=1e-5)


def test_group_mean_is_dr_grpo_no_std():
    adv = group_mean(torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert torch.allclose(adv, torch.tensor([0.5, -0.5, -0.5, 0.5]))
    adv = group_mean(torch.tensor([[2.0, 4.0, 9.0]]))
    assert torch.allclose(adv, torch.tensor([[-3.0, -1.0, 4.0]]))


def test_leave_one_out_values():
    # 1 - (0 + 0 + 1)/3 = 2/3 ; 0 - (1 + 0 + 1)/3 = -2/3
    adv = leave_one_out(torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert torch.allclose(adv, torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]))
    # 3 - (1+2)/2 = 1.5 ; 1 - (3+2)/2 = -1.5 ; 2 - (3+1)/2 = 0
    adv = leave_one_out(torch.tensor([[3.0, 1.0, 2.0]]))
    assert torch.allclose(adv, torch.tensor([[1.5, -1.5, 0.0]]))
    with pytest.raises(ValueError):
        leave_one_out(torch.tensor([1.0]))


def test_registry_covers_every_estimator():
    assert set(ADVANTAGE_ESTIMATORS) == set(AdvantageEstimator)
    assert AdvantageEstimator("dr_grpo") is AdvantageEstimator.DR_GRPO


def test_compute_advantages_ragged_groups_and_zero_variance():
    rewards = [[0.5, 0.5, 0.5], [1.0, 0.0], [0.7], [0.3, 0.3 + 5e-7], [1.0, 0.0, 0.0, 1.0]]
    advs, zero_var = compute_advantages(rewards, AdvantageEstimator.GRPO)
    assert zero_var == [True, False, True, True, False]
    assert advs[0] == [0.0, 0.0, 0.0]
    assert advs[2] == [0.0]
    assert advs[3] == [0.0, 0.0]  # equal within 1e-6: exactly 0, not noise / eps
    # [1, 0]: mean 0.5, Bessel std 0.707107 -> +-0.707106
    assert advs[1] == pytest.approx([0.707106, -0.707106], abs=1e-5)
    assert advs[4] == pytest.approx([0.866025, -0.866025, -0.866025, 0.866025], abs=1e-5)


def test_compute_advantages_by_name_rloo_and_dr_grpo():
    advs, zero_var = compute_advantages([[3.0, 1.0, 2.0], [1.0, 1.0]], "rloo")
    assert advs == [pytest.approx([1.5, -1.5, 0.0]), [0.0, 0.0]]
    assert zero_var == [False, True]
    advs, _ = compute_advantages([[2.0, 4.0, 9.0]], AdvantageEstimator.DR_GRPO)
    assert advs == [pytest.approx([-3.0, -1.0, 4.0])]


def test_discounted_turn_returns():
    assert discounted_turn_returns([0.0, 0.0, 1.0], 0.5) == pytest.approx([0.25, 0.5, 1.0])
    # R2 = 3 ; R1 = 2 + 0.9*3 = 4.7 ; R0 = 1 + 0.9*4.7 = 5.23
    assert discounted_turn_returns([1.0, 2.0, 3.0], 0.9) == pytest.approx([5.23, 4.7, 3.0])
    assert discounted_turn_returns([1.0, 2.0], 0.0) == [1.0, 2.0]
    assert discounted_turn_returns([], 0.9) == []
    with pytest.raises(ValueError):
        discounted_turn_returns([1.0], 1.5)


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
def test_turn_advantages_start_as_trajectory_credit_and_compare_later_turns_with_who_got_there(estimator):
    rewards = [0.9, 0.1, 0.4]
    (expected,), _ = compute_advantages([rewards], estimator)
    advs, zero_var = turn_advantages(rewards, [None, None, None], [3, 1, 2], estimator, gamma=1.0)
    assert not zero_var
    assert [a[0] for a in advs] == pytest.approx(expected, abs=1e-12)  # turn 1: every rollout, trajectory credit
    scale = float(torch.tensor(rewards).std()) + 1e-6 if estimator == "grpo" else 1.0
    # turn 2: rollouts 0 and 2 got there (returns 0.9 and 0.4); turn 3: rollout 0 alone -> nothing to compare
    if estimator == "rloo":
        assert advs[0][1:] == pytest.approx([0.5, 0.0]) and advs[2][1] == pytest.approx(-0.5)
    else:
        assert advs[0][1:] == pytest.approx([0.25 / scale, 0.0]) and advs[2][1] == pytest.approx(-0.25 / scale)


def test_turn_advantages_hand_computed_split_and_discount():
    # rollout 0: two detour calls cost 0.1 each on turns 1 and 2, outcome 0.8 on turn 3 -> reward 0.6
    # rollout 1: reward 0.2, all on its only turn
    # gamma 0.5: G0 = [-0.1 + 0.5*(-0.1) + 0.25*0.8, -0.1 + 0.5*0.8, 0.8] = [0.05, 0.3, 0.8]; G1 = [0.2]
    # dr_grpo, turn 1: baseline (0.05 + 0.2) / 2 = 0.125; turns 2-3: rollout 0 alone
    advs, zero_var = turn_advantages([0.6, 0.2], [[-0.1, -0.1, 0.8], None], [3, 1], "dr_grpo", gamma=0.5)
    assert not zero_var
    assert advs[0] == pytest.approx([-0.075, 0.0, 0.0])
    assert advs[1] == pytest.approx([0.075])


def test_a_later_detour_is_not_rewarded_for_the_costs_behind_it():
    # Two correct rollouts (outcome 1.0 on the answer turn). The efficient one answers at turn 3; the verbose
    # one calls at turns 3, 4 and 5 (0.05 each) and answers at turn 6: reward 0.85.
    # Against the start returns (mean 0.925) its turn-5 call (G = 0.95) would look good; per turn index it is
    # the turn-3 call -- where the efficient sibling answered instead -- that carries the difference.
    verbose = [0.0, 0.0, -0.05, -0.05, -0.05, 1.0]
    advs, _ = turn_advantages([1.0, 0.85], [[0.0, 0.0, 1.0], verbose], [3, 6], "dr_grpo", gamma=1.0)
    assert advs[0] == pytest.approx([0.075, 0.075, 0.075])
    assert advs[1] == pytest.approx([-0.075, -0.075, -0.075, 0.0, 0.0, 0.0])
    assert all(a <= 0 for a in advs[1])  # no turn of the costlier rollout is reinforced


def test_turn_advantages_zero_variance_and_bad_splits():
    advs, zero_var = turn_advantages([0.5, 0.5], [None, [0.7, -0.2]], [1, 2], "grpo", gamma=1.0)
    assert zero_var and advs == [[0.0], [0.0, 0.0]]
    with pytest.raises(ValueError, match="2 values for 3 assistant turns"):
        turn_advantages([0.5, 0.1], [[0.25, 0.25], None], [3, 1], "grpo", gamma=1.0)
    with pytest.raises(ValueError, match="sum to 0.4, not the reward 0.5"):
        turn_advantages([0.5, 0.1], [[0.2, 0.2], None], [2, 1], "grpo", gamma=1.0)
    with pytest.raises(ValueError, match="no assistant turn"):
        turn_advantages([0.5, 0.1], [None, None], [0, 1], "grpo", gamma=1.0)
    with pytest.raises(ValueError, match="ragged group"):
        turn_advantages([0.5, 0.1], [None], [1, 1], "grpo", gamma=1.0)
