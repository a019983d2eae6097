"""Policy-gradient losses on sampled tokens, plus the SFT and DPO objectives.

A policy loss is three independent choices, each a typed value mapped to a
pure function by a registry (no ``loss_type`` if/elif chain):

1. the **surrogate** (:class:`PolicyLoss`), per token, all ``[B, T]``:

   ``ppo_clip``  token ratio ``r_t = exp(logp_t - old_logp_t)``, clipped to
                 ``[1 - eps_low, 1 + eps_low]``, ``-min(r A, clip(r) A)``.
                 PPO (Schulman et al. 2017) as used by GRPO (Shao et al. 2024,
                 "DeepSeekMath").
   ``dapo``      the same with DAPO's *clip-higher*: ``[1 - eps_low, 1 + eps_high]``,
                 ``eps_high > eps_low`` lets low-probability tokens grow and
                 fights entropy collapse (Yu et al. 2025, "DAPO", §3.1).
   ``gspo``      one ratio per sequence, the geometric mean of its token
                 ratios ``s_i = exp(mean_{t sampled} (logp_t - old_logp_t))``,
                 clipped at sequence level and broadcast to the sequence's
                 tokens (Zheng et al. 2025, "Group Sequence Policy
                 Optimization"). Its paper clips far tighter (eps ~3e-4/4e-4)
                 than token-level PPO; set ``clip_eps_low/high`` accordingly.
                 Advantages must be per sequence ``[B]``.

2. the **aggregation** (:class:`Aggregation`) of ``[B, T]`` token losses to a scalar:

   ``token_mean``             sum over all sampled tokens of the batch / their
                              count (DAPO §3.3: long answers are not diluted).
   ``seq_mean_token_mean``    mean over each sequence's tokens, then over
                              sequences (GRPO as published).
   ``seq_mean_token_sum_norm`` token sum / constant ``max_tokens``, mean over
                              sequences (Dr. GRPO, Liu et al. 2025: no length
                              bias from a per-sequence denominator).

   Each surrogate has a default (DAPO → token mean, the others → sequence
   mean); :class:`LossConfig` resolves it so callers can read ``cfg.aggregation``.

3. an optional **KL to a reference** policy, ``beta * k3``, with Schulman's k3
   estimator ("Approximating KL Divergence", 2020): for tokens sampled from
   the policy, ``k3 = exp(ref - logp) - (ref - logp) - 1`` is an unbiased,
   always non-negative estimate of ``KL(policy || ref)`` (GRPO eq. 4).

Shapes: ``logprobs, old_logprobs, ref_logprobs, mask, entropy: [B, T]`` aligned
with the input ids (see :mod:`agentrft.algo.logprobs`); ``mask`` is 1 exactly on
sampled tokens (prompt, tool output and padding are 0); ``advantages: [B]`` (or
``[B, T]`` for per-token advantages). Masked positions never affect the loss or
its gradient: they are selected away with ``torch.where``, not multiplied, so
even a ``nan``/``inf`` there cannot leak in.

:func:`sft_loss` is the mean NLL over masked tokens; :func:`dpo_loss` is the
sigmoid DPO loss (Rafailov et al. 2023, "Direct Preference Optimization").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from agentrft.algo.logprobs import logprobs_from_logits


class PolicyLoss(str, Enum):
    """Which clipped surrogate the policy optimises."""

    PPO_CLIP = "ppo_clip"
    DAPO = "dapo"
    GSPO = "gspo"


class Aggregation(str, Enum):
    """How per-token losses of a batch become one scalar."""

    TOKEN_MEAN = "token_mean"
    SEQ_MEAN_TOKEN_MEAN = "seq_mean_token_mean"
    SEQ_MEAN_TOKEN_SUM_NORM = "seq_mean_token_sum_norm"


DEFAULT_AGGREGATION: dict[PolicyLoss, Aggregation] = {
    PolicyLoss.PPO_CLIP: Aggregation.SEQ_MEAN_TOKEN_MEAN,
    PolicyLoss.DAPO: Aggregation.TOKEN_MEAN,
    PolicyLoss.GSPO: Aggregation.SEQ_MEAN_TOKEN_MEAN,
}


@dataclass
class LossConfig:
    """Policy-loss settings; ``aggregation=None`` takes the surrogate's default."""

    loss: PolicyLoss = PolicyLoss.PPO_CLIP
    clip_eps_low: float = 0.2
    """Lower clip ``1 - eps_low``; also the upper clip of symmetric ``ppo_clip``."""
    clip_eps_high: float = 0.28
    """Upper clip ``1 + eps_high`` of ``dapo`` and ``gspo`` (unused by ``ppo_clip``)."""
    beta: float = 0.0
    """Weight of the k3 KL to the reference; 0 = no reference needed."""
    aggregation: Aggregation | None = None
    """How token losses become a scalar; ``None`` resolves to ``DEFAULT_AGGREGATION[loss]``."""
    max_tokens: int | None = None
    """Dr. GRPO's constant normaliser; default: the batch's padded length ``T``."""

    def __post_init__(self) -> None:
        self.loss = PolicyLoss(self.loss)
        self.aggregation = Aggregation(self.aggregation) if self.aggregation is not None else DEFAULT_AGGREGATION[self.loss]
        if self.clip_eps_low <= 0 or self.clip_eps_high <= 0 or self.clip_eps_low >= 1:
            raise ValueError("clip epsilons must be positive and clip_eps_low < 1")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")


@dataclass
class LossOutput:
    """A scalar loss to backpropagate and detached float statistics to log."""

    loss: Tensor
    stats: dict[str, float] = field(default_factory=dict)


class Surrogate(NamedTuple):
    """Per-token output of a surrogate; all [B, T], meaningful where ``mask`` is 1."""

    loss: Tensor  # -min(r A, clip(r) A)
    ratio: Tensor  # the ratio that was clipped (token or broadcast sequence ratio)
    clipped: Tensor  # bool: the clipped branch won, so this token has no gradient


# -- surrogates -----------------------------------------------------------------


def _masked(values: Tensor, mask: Tensor) -> Tensor:
    """values with masked-out positions replaced by an exact 0 (no nan leaks). [B, T] -> [B, T]"""
    return torch.where(mask.bool(), values, torch.zeros_like(values))


def _clipped_objective(ratio: Tensor, advantages: Tensor, low: float, high: float) -> Surrogate:
    """``-min(r A, clip(r, 1-low, 1+high) A)`` and where clipping removed the gradient.

    ratio: [B, T], advantages: [B, T] -> Surrogate of [B, T]
    """
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - low, 1.0 + high) * advantages
    was_clipped = ((ratio > 1.0 + high) & (advantages > 0)) | ((ratio < 1.0 - low) & (advantages < 0))
    return Surrogate(-torch.minimum(unclipped, clipped), ratio, was_clipped)


def _token_advantages(advantages: Tensor, mask: Tensor) -> Tensor:
    """advantages: [B] or [B, T], mask: [B, T] -> [B, T], exactly 0 off the mask"""
    per_token = (advantages[:, None] if advantages.dim() == 1 else advantages).expand_as(mask).to(mask.dtype)
    return _masked(per_token, mask)


def _log_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    """``logp - old_logp`` on sampled tokens, exactly 0 elsewhere. [B, T] -> [B, T]"""
    return torch.where(mask.bool(), logprobs - old_logprobs, torch.zeros_like(logprobs))


def ppo_clip(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, cfg: LossConfig) -> Surrogate:
    """GRPO/PPO: token ratio, symmetric clip ``[1 - eps_low, 1 + eps_low]``.

    logprobs, old_logprobs, mask: [B, T]; advantages: [B] or [B, T] -> Surrogate [B, T]
    """
    ratio = torch.exp(_log_ratio(logprobs, old_logprobs, mask))  # [B, T]
    return _clipped_objective(ratio, _token_advantages(advantages, mask), cfg.clip_eps_low, cfg.clip_eps_low)


def dapo_clip_higher(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, cfg: LossConfig) -> Surrogate:
    """DAPO: token ratio, asymmetric clip ``[1 - eps_low, 1 + eps_high]``.

    logprobs, old_logprobs, mask: [B, T]; advantages: [B] or [B, T] -> Surrogate [B, T]
    """
    ratio = torch.exp(_log_ratio(logprobs, old_logprobs, mask))  # [B, T]
    return _clipped_objective(ratio, _token_advantages(advantages, mask), cfg.clip_eps_low, cfg.clip_eps_high)


def gspo(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, cfg: LossConfig) -> Surrogate:
    """GSPO: sequence ratio ``exp(mean_t (logp - old_logp))`` over sampled tokens, clipped per sequence.

    logprobs, old_logprobs, mask: [B, T]; advantages: [B] -> Surrogate [B, T] (constant along T)
    """
    if advantages.dim() != 1:
        raise ValueError("GSPO is sequence-level: advantages must be [B], not per token")
    m = mask.to(logprobs.dtype)
    n_tokens = m.sum(dim=-1).clamp(min=1.0)  # [B]
    seq_log_ratio = _log_ratio(logprobs, old_logprobs, mask).sum(dim=-1) / n_tokens  # [B]
    ratio = torch.exp(seq_log_ratio)[:, None].expand_as(logprobs)  # [B, T]
    return _clipped_objective(ratio, _token_advantages(advantages, mask), cfg.clip_eps_low, cfg.clip_eps_high)


SurrogateFn = Callable[[Tensor, Tensor, Tensor, Tensor, LossConfig], Surrogate]

POLICY_LOSSES: dict[PolicyLoss, SurrogateFn] = {
    PolicyLoss.PPO_CLIP: ppo_clip,
    PolicyLoss.DAPO: dapo_clip_higher,
    PolicyLoss.GSPO: gspo,
}


# -- aggregation ------------------------------------------------------------------


def token_mean(values: Tensor, mask: Tensor, max_tokens: int) -> Tensor:
    """DAPO: sum over every sampled token of the batch / number of sampled tokens. [B, T] -> []"""
    return _masked(values, mask).sum() / mask.sum().clamp(min=1)


def seq_mean_token_mean(values: Tensor, mask: Tensor, max_tokens: int) -> Tensor:
    """GRPO: per-sequence token mean, then mean over sequences. [B, T] -> []"""
    per_seq = _masked(values, mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)  # [B]
    return per_seq.mean()


def seq_mean_token_sum_norm(values: Tensor, mask: Tensor, max_tokens: int) -> Tensor:
    """Dr. GRPO: per-sequence token sum / constant ``max_tokens``, mean over sequences. [B, T] -> []"""
    per_seq = _masked(values, mask).sum(dim=-1) / max_tokens  # [B]
    return per_seq.mean()


AGGREGATIONS: dict[Aggregation, Callable[[Tensor, Tensor, int], Tensor]] = {
    Aggregation.TOKEN_MEAN: token_mean,
    Aggregation.SEQ_MEAN_TOKEN_MEAN: seq_mean_token_mean,
    Aggregation.SEQ_MEAN_TOKEN_SUM_NORM: seq_mean_token_sum_norm,
}


# -- KL ---------------------------------------------------------------------------


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor | None = None) -> Tensor:
    """Schulman's k3 estimate of ``KL(policy || ref)`` per token: ``exp(x) - x - 1``, ``x = ref - logp``.

    logprobs, ref_logprobs, mask: [B, T] -> [B, T] (>= 0; 0 where equal and where ``mask`` is 0)
    """
    x = ref_logprobs - logprobs
    if mask is not None:
        x = _masked(x, mask)  # before exp: keeps masked nan/inf out of the gradient
    return torch.exp(x) - x - 1.0


# -- the policy loss --------------------------------------------------------------


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    cfg: LossConfig,
    *,
    ref_logprobs: Tensor | None = None,
    entropy: Tensor | None = None,
    weights: Tensor | None = None,
) -> LossOutput:
    """Surrogate (+ ``beta`` * k3 KL to the reference), aggregated over sampled tokens.

    logprobs, old_logprobs, mask: [B, T]; advantages: [B] or [B, T];
    ref_logprobs, entropy, weights: [B, T] or None -> LossOutput(loss [], stats)

    ``weights``: per-token importance weights (:func:`agentrft.algo.importance.importance_weights`), detached,
    multiplying each token's surrogate before the KL term is added and the tokens are aggregated (TRL's
    ``vllm_importance_sampling_correction`` order); ``None`` computes exactly what it computes without them.

    Stats (masked token means): ``clip_fraction``, ``approx_kl`` (k3 estimate of
    KL(old || new), how far this update moved), ``ratio_mean``, ``kl_ref``
    (when a reference is given), ``entropy`` (when given).
    """
    if cfg.beta > 0 and ref_logprobs is None:
        raise ValueError("beta > 0 needs ref_logprobs")
    mask = mask.to(logprobs.dtype)
    max_tokens = cfg.max_tokens or logprobs.shape[-1]
    aggregate = AGGREGATIONS[cfg.aggregation]

    surrogate = POLICY_LOSSES[cfg.loss](logprobs, old_logprobs, advantages, mask, cfg)  # [B, T] each
    per_token = surrogate.loss  # [B, T]
    if weights is not None:
        per_token = per_token * _masked(weights.detach().to(per_token.dtype), mask)  # [B, T]
    kl_ref = None
    if ref_logprobs is not None:
        kl_ref = k3_kl(logprobs, ref_logprobs, mask)  # [B, T]
        if cfg.beta > 0:
            per_token = per_token + cfg.beta * kl_ref
    loss = aggregate(per_token, mask, max_tokens)

    with torch.no_grad():
        log_ratio = _log_ratio(logprobs, old_logprobs, mask)  # [B, T]
        stats = {
            "clip_fraction": float(token_mean(surrogate.clipped.to(mask.dtype), mask, max_tokens)),
            "approx_kl": float(token_mean(torch.exp(log_ratio) - 1.0 - log_ratio, mask, max_tokens)),
            "ratio_mean": float(token_mean(surrogate.ratio, mask, max_tokens)),
        }
        if kl_ref is not None:
            stats["kl_ref"] = float(token_mean(kl_ref, mask, max_tokens))
        if entropy is not None:
            stats["entropy"] = float(token_mean(entropy, mask, max_tokens))
    return LossOutput(loss=loss, stats=stats)


# -- SFT and DPO ------------------------------------------------------------------


def sft_loss(logprobs_or_logits: Tensor, mask: Tensor, input_ids: Tensor | None = None) -> Tensor:
    """Mean negative log-likelihood over masked (trainable) tokens.

    logprobs_or_logits: aligned token logprobs [B, T], or next-token logits
    [B, T, V] together with ``input_ids [B, T]``; mask: [B, T] -> []
    """
    if logprobs_or_logits.dim() == 3:
        if input_ids is None:
            raise ValueError("sft_loss on logits needs input_ids")
        logprobs, _ = logprobs_from_logits(logprobs_or_logits, input_ids)  # [B, T]
    else:
        logprobs = logprobs_or_logits
    return token_mean(-logprobs, mask, logprobs.shape[-1])


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
) -> tuple[Tensor, dict[str, float]]:
    """Sigmoid DPO: ``-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))``, batch mean.

    All inputs: [B] sequence log-probabilities (summed over trainable tokens) -> (loss [], stats)
    Stats: ``reward_accuracy`` (share of pairs with chosen reward > rejected),
    ``reward_margin``, ``chosen_reward``, ``rejected_reward`` (implicit rewards
    ``beta * (pi - ref)``, batch means).
    """
    chosen_reward = beta * (policy_chosen_logps - ref_chosen_logps)  # [B]
    rejected_reward = beta * (policy_rejected_logps - ref_rejected_logps)  # [B]
    margin = chosen_reward - rejected_reward  # [B]
    loss = -F.logsigmoid(margin).mean()
    with torch.no_grad():
        stats = {
            "reward_accuracy": float((margin > 0).float().mean()),
            "reward_margin": float(margin.mean()),
            "chosen_reward": float(chosen_reward.mean()),
            "rejected_reward": float(rejected_reward.mean()),
        }
    return loss, stats
