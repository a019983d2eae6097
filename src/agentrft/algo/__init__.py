"""The algorithm layer: pure functions from rewards and token records to a loss.

``advantages`` (group baselines), ``losses`` (policy surrogates, aggregation,
k3 KL, SFT and DPO), ``logprobs`` (aligned per-token logprobs of a causal LM)
and ``batch`` (trajectories to padded tensors with the sampled-token mask).
Each choice is a typed enum value mapped to a function by a registry.
"""

from agentrft.algo.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageEstimator,
    Credit,
    compute_advantages,
    discounted_turn_returns,
    turn_advantages,
    group_mean,
    group_zscore,
    leave_one_out,
)
from agentrft.algo.batch import TrainBatch, collate_trajectories
from agentrft.algo.logprobs import logprobs_from_logits, token_logprobs, token_logprobs_and_entropy
from agentrft.algo.losses import (
    AGGREGATIONS,
    POLICY_LOSSES,
    Aggregation,
    LossConfig,
    LossOutput,
    PolicyLoss,
    dpo_loss,
    k3_kl,
    policy_loss,
    sft_loss,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATIONS",
    "POLICY_LOSSES",
    "AdvantageEstimator",
    "Aggregation",
    "Credit",
    "LossConfig",
    "LossOutput",
    "PolicyLoss",
    "TrainBatch",
    "collate_trajectories",
    "compute_advantages",
    "discounted_turn_returns",
    "turn_advantages",
    "dpo_loss",
    "group_mean",
    "group_zscore",
    "k3_kl",
    "leave_one_out",
    "logprobs_from_logits",
    "policy_loss",
    "sft_loss",
    "token_logprobs",
    "token_logprobs_and_entropy",
]
