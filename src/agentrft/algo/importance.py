"""Truncated importance sampling (TIS): correct for tokens sampled by a distribution the trainer does not compute.

The loss assumes each sampled token was drawn from the policy the trainer
evaluates. It was not quite: an inference engine (vLLM, another kernel, bf16,
a server still on the previous weights while an asynchronous trainer moves
on) samples from ``pi_sampler``, and the trainer computes ``pi_trainer``.
Weighting each token's loss by ``pi_trainer / pi_sampler`` makes the gradient
an unbiased estimate again; truncating the weight at ``cap`` bounds its
variance at the price of a small bias (Yao et al., "Your efficient RL
framework secretly brings you off-policy RL training", 2025). The weight is a
constant in the gradient (detached): it rescales each token's policy-gradient
term, it is not optimised.

Four modes, named as TRL names them (``vllm_importance_sampling_mode``; verl's
``algorithm.rollout_correction.rollout_is: token|sequence`` with
``rollout_is_threshold``, formerly ``tis_imp_ratio_cap``, is the truncating
pair):

* ``token_truncate``    w_t = min(r_t, cap)                  r_t = exp(logp_trainer_t - logp_sampler_t)
* ``token_mask``        w_t = r_t if r_t <= cap else 0       (drops the tokens the sampler got most wrong)
* ``sequence_truncate`` w   = min(prod_t r_t, cap)           one weight per sequence, on each sampled token
* ``sequence_mask``     w   = prod_t r_t if it is <= cap else 0

Only sampled tokens carry a weight: ``mask`` is the batch's loss mask (1
exactly where the token kind is ``sampled``, :func:`sampled_mask`); prompt
and tool-output tokens get 0 and never count toward a sequence's product.
Log-ratios are clamped to +-20 before ``exp`` (verl's safety bound), so a
token the sampler gave almost no mass cannot overflow a weight.

What ``trainer_logprobs`` is: the trainer's log-probabilities of the sampled
tokens. With decoupled PPO they are the behaviour weights recomputed by the
trainer (the PPO ratio then runs against them and this weight corrects the
sampler's mismatch only); with a single update per batch they may simply be
the current ones. They must be computed at the rollout's temperature, as the
sampler's are (:mod:`agentrft.rollout.hf_sampler`).

Shapes: B sequences, T positions; every tensor argument is [B, T].
"""

from __future__ import annotations

from enum import Enum
from typing import Callable, Sequence

import torch
from torch import Tensor

LOG_RATIO_BOUND = 20.0
"""|log r| is clamped to this before ``exp`` (exp(20) ~ 4.9e8: any cap truncates it)."""


class ISCorrection(str, Enum):
    """How per-token ratios ``pi_trainer / pi_sampler`` become loss weights."""

    TOKEN_TRUNCATE = "token_truncate"
    TOKEN_MASK = "token_mask"
    SEQUENCE_TRUNCATE = "sequence_truncate"
    SEQUENCE_MASK = "sequence_mask"


def sampled_mask(token_kinds: Sequence[Sequence[str]], length: int | None = None) -> Tensor:
    """[B, T] float: 1 where a token's kind is ``sampled``, 0 elsewhere and on right padding to ``length``."""
    T = length if length is not None else max((len(k) for k in token_kinds), default=0)
    mask = torch.zeros(len(token_kinds), T)
    for i, kinds in enumerate(token_kinds):
        mask[i, : min(len(kinds), T)] = torch.tensor([k == "sampled" for k in kinds[:T]], dtype=torch.float32)
    return mask


def log_ratio(trainer_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor) -> Tensor:
    """[B, T]: logp_trainer - logp_sampler on masked tokens, clamped to +-``LOG_RATIO_BOUND``; 0 elsewhere."""
    diff = (trainer_logprobs.detach() - sampler_logprobs.detach()).clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND)
    return torch.where(mask.bool(), diff, torch.zeros_like(diff))  # where: junk (inf, nan) off the mask stays out


def _sequence_log_ratio(lr: Tensor) -> Tensor:
    """[B, 1]: log of the product of a sequence's token ratios, clamped like a token's."""
    return lr.sum(dim=-1, keepdim=True).clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND)


def token_truncate(lr: Tensor, mask: Tensor, cap: float) -> Tensor:
    """[B, T]: min(r_t, cap) on masked tokens (TIS)."""
    return torch.exp(lr).clamp(max=cap) * mask


def token_mask(lr: Tensor, mask: Tensor, cap: float) -> Tensor:
    """[B, T]: r_t where r_t <= cap, 0 where it is above (and off the mask)."""
    r = torch.exp(lr)
    return torch.where(r <= cap, r, torch.zeros_like(r)) * mask


def sequence_truncate(lr: Tensor, mask: Tensor, cap: float) -> Tensor:
    """[B, T]: min(prod_t r_t, cap), the sequence's weight on each of its masked tokens."""
    return torch.exp(_sequence_log_ratio(lr)).clamp(max=cap) * mask  # [B, 1] broadcast over T


def sequence_mask(lr: Tensor, mask: Tensor, cap: float) -> Tensor:
    """[B, T]: prod_t r_t where it is <= cap, else 0, on each masked token of the sequence."""
    r = torch.exp(_sequence_log_ratio(lr))  # [B, 1]
    return torch.where(r <= cap, r, torch.zeros_like(r)) * mask


IS_CORRECTIONS: dict[ISCorrection, Callable[[Tensor, Tensor, float], Tensor]] = {
    ISCorrection.TOKEN_TRUNCATE: token_truncate,
    ISCorrection.TOKEN_MASK: token_mask,
    ISCorrection.SEQUENCE_TRUNCATE: sequence_truncate,
    ISCorrection.SEQUENCE_MASK: sequence_mask,
}


def importance_weights(trainer_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor,
                       mode: ISCorrection | str = ISCorrection.TOKEN_TRUNCATE, cap: float = 2.0) -> Tensor:
    """[B, T] detached loss weights for the sampled tokens (0 off the mask); multiply each token's loss by them.

    trainer_logprobs, sampler_logprobs, mask: [B, T]. ``cap`` (> 0): TRL's ``vllm_importance_sampling_cap`` and
    verl's ``rollout_is_threshold`` default to 2."""
    if cap <= 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    mask = mask.to(trainer_logprobs.dtype)
    return IS_CORRECTIONS[ISCorrection(mode)](log_ratio(trainer_logprobs, sampler_logprobs, mask), mask, cap)


def importance_stats(trainer_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor, weights: Tensor,
                     cap: float = 2.0) -> dict[str, float]:
    """How far the sampler is from the trainer, over masked tokens: ``is_weight_mean`` (of ``weights``),
    ``is_ratio_mean`` (untruncated token ratios), ``is_over_cap_fraction`` (tokens whose ratio exceeds ``cap``)
    and ``mismatch_kl`` (k3 estimate of KL(sampler || trainer) from the sampler's draws: r - 1 - log r)."""
    mask = mask.to(trainer_logprobs.dtype)
    n = mask.sum().clamp(min=1.0)
    lr = log_ratio(trainer_logprobs, sampler_logprobs, mask)
    r = torch.exp(lr)
    return {
        "is_weight_mean": float((weights.detach() * mask).sum() / n),
        "is_ratio_mean": float((r * mask).sum() / n),
        "is_over_cap_fraction": float(((r > cap).to(mask.dtype) * mask).sum() / n),
        "mismatch_kl": float(((r - 1.0 - lr) * mask).sum() / n),
    }
