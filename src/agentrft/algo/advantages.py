"""Group-relative advantages: how much better one rollout did than its siblings.

The group (``group_size`` rollouts of one task) is the baseline: no value
network, the other samples of the same prompt say what "expected" looks like.
Each estimator is a pure function over the rewards of a group, ``rewards [G]``
or a batch of equal-size groups ``rewards [B, G]`` (reduced over the last
dimension), chosen by a typed :class:`AdvantageEstimator` from a registry:

``grpo``     z-score, ``A_i = (r_i - mean(r)) / (std(r) + eps)``.
             GRPO, Shao et al. 2024, "DeepSeekMath", §4.1.2. ``std`` is the
             sample (Bessel-corrected) standard deviation, as in TRL/torchtune.
``dr_grpo``  mean-centred only, ``A_i = r_i - mean(r)``. Liu et al. 2025,
             "Understanding R1-Zero-like Training" (Dr. GRPO): dividing by the
             std up-weights near-unanimous groups (too easy / too hard tasks),
             a question-level difficulty bias; dropping it removes the bias.
``rloo``     leave-one-out, ``A_i = r_i - mean_{j != i}(r_j) = G/(G-1) (r_i - mean(r))``.
             Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style
             Optimization for Learning from Human Feedback in LLMs" (RLOO);
             Kool et al. 2019: the baseline excludes the sample itself, so it
             is unbiased.

Zero-variance groups (all rewards equal within ``1e-6``) carry no learning
signal under any of these estimators: :func:`compute_advantages` flags them
(and sets their advantages to exactly 0, not to a float-noise residue divided
by ``eps``) so the trainer can filter and count them (DAPO's "dynamic
sampling", Yu et al. 2025, drops such groups). A group of one is
zero-variance by definition.

Infrastructure-failed trajectories (``Trajectory.is_infra_failure``) are
excluded by the caller *before* this module: their reward says nothing about
the policy, and counting them as 0 would punish the model for a network error.
Groups therefore may have different sizes, which is why
:func:`compute_advantages` takes ragged lists.

:func:`discounted_turn_returns` and :func:`turn_advantages` serve the
per-turn credit option (``rft.credit: per_turn``): each assistant turn ``t``
of rollout ``i`` gets its own advantage from the discounted return

    G_{i,t} = sum_{k >= t} gamma^(k-t) r_{i,k}

where ``r_{i,k}`` is the part of the rollout's reward earned at turn ``k``: a
grader's split (``Grade.turn_rewards``, summing to ``Grade.reward``; e.g. the
cost of a wasted tool call on the turn that made it) or, without one, the
whole reward on the last turn. Each turn is compared with the group's
rollouts that got as far, its own baseline over their returns at the same
turn; the scale is the estimator's over the start returns ``V_i = G_{i,1}``:

    A_{i,t} = (G_{i,t} - b_{i,t}) / s    R_t = {j : rollout j has a turn t}
        grpo:    b_{i,t} = mean_{j in R_t} G_{j,t},          s = std(V) + eps
        dr_grpo: b_{i,t} = mean_{j in R_t} G_{j,t},          s = 1
        rloo:    b_{i,t} = mean_{j in R_t, j != i} G_{j,t},  s = 1  (A = 0 if no such j)

Why a baseline per turn index: ``G_{i,t}`` is the return *from* turn t, so
it no longer contains the costs of earlier turns, while the start returns do.
Measured against the start returns instead, a later detour looks
better than the first one and, with costs split onto turns, can even get a
positive advantage for making one more call: the group mean of the returns
at turn t is the group's estimate of what a rollout that is still going at
turn t should expect. Turn 1 is exactly trajectory credit; a turn that only
one rollout reached gets 0 (nothing to compare with). With ``gamma = 1`` and
no split, a rollout's later turns are compared with the rollouts that lasted
as long: the turn where a better sibling answered and this one called again
carries the difference. A group is zero-variance exactly when its start
returns are equal (all zeros then, as for trajectory credit).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

import torch
from torch import Tensor

ZERO_VARIANCE_TOL = 1e-6


class AdvantageEstimator(str, Enum):
    """Which group baseline turns rewards into advantages."""

    GRPO = "grpo"
    DR_GRPO = "dr_grpo"
    RLOO = "rloo"


class Credit(str, Enum):
    """Which tokens a rollout's advantage reaches."""

    TRAJECTORY = "trajectory"
    """The reward's advantage reaches every sampled token of every turn (:func:`compute_advantages`)."""
    PER_TURN = "per_turn"
    """Each assistant turn gets the advantage of its discounted return (:func:`turn_advantages`)."""


def group_zscore(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """GRPO: ``(r - mean) / (std + eps)`` within each group.

    rewards: [..., G] -> advantages [..., G]
    """
    mean = rewards.mean(dim=-1, keepdim=True)  # [..., 1]
    std = rewards.std(dim=-1, keepdim=True)  # [..., 1], Bessel-corrected
    return (rewards - mean) / (std + eps)


def group_mean(rewards: Tensor) -> Tensor:
    """Dr. GRPO: ``r - mean`` within each group (no std normalisation).

    rewards: [..., G] -> advantages [..., G]
    """
    return rewards - rewards.mean(dim=-1, keepdim=True)


def leave_one_out(rewards: Tensor) -> Tensor:
    """RLOO: ``r_i - mean of the other G-1 rewards`` within each group (needs G >= 2).

    rewards: [..., G] -> advantages [..., G]
    """
    g = rewards.shape[-1]
    if g < 2:
        raise ValueError("leave-one-out needs at least 2 rewards per group")
    others_mean = (rewards.sum(dim=-1, keepdim=True) - rewards) / (g - 1)  # [..., G]
    return rewards - others_mean


ADVANTAGE_ESTIMATORS: dict[AdvantageEstimator, Callable[[Tensor], Tensor]] = {
    AdvantageEstimator.GRPO: group_zscore,
    AdvantageEstimator.DR_GRPO: group_mean,
    AdvantageEstimator.RLOO: leave_one_out,
}


def is_zero_variance(rewards: Tensor, tol: float = ZERO_VARIANCE_TOL) -> Tensor:
    """True for groups whose rewards are all equal within ``tol`` (max - min <= tol).

    rewards: [..., G] -> [...] bool
    """
    return (rewards.amax(dim=-1) - rewards.amin(dim=-1)) <= tol


def compute_advantages(
    rewards_by_group: list[list[float]],
    estimator: AdvantageEstimator | str,
) -> tuple[list[list[float]], list[bool]]:
    """Advantages for ragged groups (infra failures already removed).

    Returns ``(advantages, zero_variance)``: ``advantages[k][i]`` belongs to
    ``rewards_by_group[k][i]``; ``zero_variance[k]`` flags group ``k`` (its
    advantages are exactly 0). Computed in float64 so equal rewards stay equal.
    """
    fn = ADVANTAGE_ESTIMATORS[AdvantageEstimator(estimator)]
    advantages: list[list[float]] = []
    zero_variance: list[bool] = []
    for rewards in rewards_by_group:
        r = torch.tensor(rewards, dtype=torch.float64)  # [G_k]
        flat = r.numel() < 2 or bool(is_zero_variance(r))
        zero_variance.append(flat)
        advantages.append([0.0] * r.numel() if flat else fn(r).tolist())
    return advantages, zero_variance


def discounted_turn_returns(turn_rewards: list[float], gamma: float) -> list[float]:
    """Per-turn returns ``R_t = r_t + gamma * R_{t+1}`` (``R_T = r_T``), one per turn."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    returns = [0.0] * len(turn_rewards)
    running = 0.0
    for t in range(len(turn_rewards) - 1, -1, -1):
        running = turn_rewards[t] + gamma * running
        returns[t] = running
    return returns


def turn_advantages(
    rewards: list[float],
    splits: list[list[float] | None],
    num_turns: list[int],
    estimator: AdvantageEstimator | str,
    gamma: float,
    eps: float = 1e-6,
    tol: float = 1e-6,
) -> tuple[list[list[float]], bool]:
    """Per-turn advantages of one group (see module docstring).

    ``rewards[i]``: rollout i's reward; ``splits[i]``: that reward split over its
    ``num_turns[i]`` assistant turns (summing to it within ``tol``), or ``None``
    to put it all on the last turn. Returns ``(advantages, zero_variance)`` with
    ``advantages[i][t]`` for turn t of rollout i (exactly 0 when zero-variance).
    Raises ValueError on a split of the wrong length or sum (a grader bug).
    """
    if not len(rewards) == len(splits) == len(num_turns):
        raise ValueError(f"ragged group: {len(rewards)} rewards, {len(splits)} splits, {len(num_turns)} turn counts")
    returns: list[list[float]] = []
    for i, (reward, split, n) in enumerate(zip(rewards, splits, num_turns)):
        if n < 1:
            raise ValueError(f"rollout {i} has no assistant turn")
        if split is None:
            per_turn = [0.0] * (n - 1) + [float(reward)]
        else:
            per_turn = [float(x) for x in split]
            if len(per_turn) != n:
                raise ValueError(f"rollout {i}: turn_rewards has {len(per_turn)} values for {n} assistant turns")
            if abs(sum(per_turn) - reward) > tol:
                raise ValueError(f"rollout {i}: turn_rewards sum to {sum(per_turn):.6g}, not the reward {reward:.6g}")
        returns.append(discounted_turn_returns(per_turn, gamma))
    start = torch.tensor([g[0] for g in returns], dtype=torch.float64)  # V [G]
    if start.numel() < 2 or bool(is_zero_variance(start)):
        return [[0.0] * len(g) for g in returns], True
    est = AdvantageEstimator(estimator)
    scale = float(start.std()) + eps if est is AdvantageEstimator.GRPO else 1.0
    advantages: list[list[float]] = []
    for i, g in enumerate(returns):
        row = []
        for t, g_t in enumerate(g):
            others = [r[t] for j, r in enumerate(returns) if len(r) > t and (j != i or est is not AdvantageEstimator.RLOO)]
            row.append((g_t - sum(others) / len(others)) / scale if others else 0.0)
        advantages.append(row)
    return advantages, False
