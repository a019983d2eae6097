"""The optimizer step shared by every method: clip, check finiteness, step or skip.

A non-finite loss or gradient never reaches the weights: the update is
skipped and reported (``skipped`` metric, a ``nonfinite_skip`` event); the
runner stops after ``max_bad_steps`` in a row with the last checkpoint intact.
"""

from __future__ import annotations

import math

import torch


def optimizer_step(ctx, skip: bool = False) -> tuple[bool, float]:
    """Clip and apply the accumulated gradients; returns (stepped, grad_norm)."""
    params = ctx.policy.trainable_parameters()
    if skip:
        ctx.optimizer.zero_grad(set_to_none=True)
        return False, float("nan")
    norm = torch.nn.utils.clip_grad_norm_(params, ctx.cfg.optim.max_grad_norm)
    norm_f = float(norm)
    if not math.isfinite(norm_f):
        ctx.optimizer.zero_grad(set_to_none=True)
        return False, norm_f
    ctx.optimizer.step()
    ctx.scheduler.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    return True, norm_f
