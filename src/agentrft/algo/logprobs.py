"""Per-token log-probabilities of a causal LM, aligned with its input ids.

``token_logprobs(model, input_ids [B, T], attention_mask [B, T]) -> [B, T]``
where ``out[b, t] = log p(input_ids[b, t] | input_ids[b, :t])`` for ``t >= 1``;
position 0 (nothing to condition on) and padding positions get 0. Keeping the
output aligned with ``input_ids`` (rather than shifted by one, as
``logits[:, :-1]`` is) lets it be multiplied directly with the
``loss_mask [B, T]`` and ``old_logprobs [B, T]`` of
:class:`agentrft.algo.batch.TrainBatch`, whose positions are token positions.

Memory: the logits ``[B, T, V]`` are the largest tensor of a step. A naive
``log_softmax(logits).gather(...)`` materialises (and saves for backward) a
second ``[B, T, V]`` tensor. Here ``log p = logit[target] - logsumexp(logits)``:
``gather`` saves only indices, ``logsumexp`` saves its ``[B, T]`` result and
the logits it was given, so for float32 logits at temperature 1 no second
vocabulary-sized tensor is kept for backward. (bf16 logits are upcast per
chunk, as HF does for its own loss, and ``temperature != 1`` scales a copy per
chunk; either keeps one float32 copy, still one fewer than
``log_softmax(logits / t)``.) The sequence is processed in chunks of
``chunk_size`` positions so the temporaries inside ``logsumexp`` and the
entropy stay ``[B, chunk, V]``.

Temperature: the sampler drew tokens from ``softmax(logits / temperature)``;
the ratio against the sampling logprobs is only meaningful if the trainer
scores the same distribution, so ``temperature`` divides the logits here too.

Entropy ``H_t = logsumexp(z) - sum_v softmax(z)_v z_v`` of the next-token
distribution is a diagnostic (collapse detector), computed without gradient.

Works with any HF causal LM: ``model(input_ids=..., attention_mask=...).logits``.
"""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_CHUNK_SIZE = 512


def logprobs_from_logits(
    logits: Tensor,
    input_ids: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Aligned token logprobs (and optionally entropy) from next-token logits.

    logits: [B, T, V] (position t predicts token t+1); input_ids: [B, T]
    -> (logprobs [B, T] with column 0 = 0, entropy [B, T] with column 0 = 0, or None)
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    b, t, _ = logits.shape
    logprobs = logits.new_zeros((b, t), dtype=torch.float32)  # [B, T]
    entropy = logits.new_zeros((b, t), dtype=torch.float32) if with_entropy else None
    targets = input_ids[:, 1:]  # [B, T-1]
    pieces: list[Tensor] = []
    for s in range(0, t - 1, chunk_size):
        e = min(s + chunk_size, t - 1)
        z = logits[:, s:e].float()  # [B, c, V]
        if temperature != 1.0:
            z = z / temperature
        lse = torch.logsumexp(z, dim=-1)  # [B, c]
        picked = z.gather(-1, targets[:, s:e, None]).squeeze(-1)  # [B, c]
        pieces.append(picked - lse)
        if entropy is not None:
            with torch.no_grad():
                p = torch.softmax(z, dim=-1)  # [B, c, V]
                entropy[:, s + 1 : e + 1] = lse - (p * z).sum(dim=-1)
    if pieces:
        # cat keeps the autograd graph; column 0 stays a constant 0.
        logprobs = torch.cat([logprobs[:, :1], torch.cat(pieces, dim=1)], dim=1)  # [B, T]
    return logprobs, entropy


def token_logprobs(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """``log p(input_ids[:, t] | input_ids[:, :t])`` under ``model``; 0 at t=0 and on padding.

    input_ids: [B, T], attention_mask: [B, T] -> [B, T] float32
    """
    logprobs, _ = token_logprobs_and_entropy(
        model, input_ids, attention_mask, temperature=temperature, chunk_size=chunk_size, with_entropy=False
    )
    return logprobs


def token_logprobs_and_entropy(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    with_entropy: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Like :func:`token_logprobs`, plus the (detached) entropy of each position's predictive distribution.

    input_ids: [B, T], attention_mask: [B, T] -> (logprobs [B, T], entropy [B, T] or None)
    ``entropy[:, t]`` is the entropy of the distribution that ``input_ids[:, t]`` was drawn from.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # [B, T, V]
    logprobs, entropy = logprobs_from_logits(
        logits, input_ids, temperature=temperature, chunk_size=chunk_size, with_entropy=with_entropy
    )
    keep = attention_mask.to(logprobs.dtype)  # [B, T]; padding positions -> 0
    return logprobs * keep, (entropy * keep if entropy is not None else None)
