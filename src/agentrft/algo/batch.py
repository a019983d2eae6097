"""Trajectories to padded training tensors, with the loss mask read from token kinds.

A :class:`~agentrft.types.Trajectory` already holds the exact token record of
a rollout: ``token_ids``, a kind per token (``prompt`` | ``sampled`` | ``env``)
and the sampler's logprob of every ``sampled`` token. Collation never
re-tokenises text; it only lays the records side by side:

    input_ids      [B, T] long   token ids, right-padded with ``pad_id``
    attention_mask [B, T] long   1 on real tokens, 0 on padding
    loss_mask      [B, T] float  1 exactly where the kind is ``sampled``: the
                                 prompt and tool/environment output are context
                                 the policy did not choose, so they are never
                                 trained on (nanochat's engine masks tool output
                                 the same way)
    old_logprobs   [B, T] float  sampling logprobs on sampled tokens, 0 elsewhere
    advantages     [B]    float  one per trajectory, or
                   [B, T] float  one per assistant turn, spread over that turn's
                                 sampled tokens (``rft.credit: per_turn``)

Position 0 is never in the loss mask: an aligned logprob there does not exist
(nothing to condition on; :func:`agentrft.algo.logprobs.token_logprobs`
returns 0), so a record that starts with a sampled token loses that one token.

Right padding keeps position ``t`` of every row at token ``t``, which is what
the causal LM and the aligned logprobs expect. ``max_len`` truncates the tail
of longer records (the start, with the task, is what conditions everything
after it); the dropped token counts are reported on the batch, never silent.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor

from agentrft.types import Trajectory


@dataclass
class TrainBatch:
    """Padded tensors of B trajectories (see module docstring for shapes)."""

    input_ids: Tensor  # [B, T] long
    attention_mask: Tensor  # [B, T] long
    loss_mask: Tensor  # [B, T] float32
    old_logprobs: Tensor  # [B, T] float32
    advantages: Tensor  # [B] float32, or [B, T] for per-turn credit
    truncated_tokens: list[int] = field(default_factory=list)
    """Tokens dropped from the end of each trajectory by ``max_len`` (0 when it fit)."""

    @property
    def num_truncated(self) -> int:
        """How many trajectories lost tokens to ``max_len``."""
        return sum(1 for n in self.truncated_tokens if n > 0)

    def to(self, device: torch.device | str) -> "TrainBatch":
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self) if isinstance(getattr(self, f.name), Tensor)}
        return replace(self, **moved)


def sampled_turns(traj: Trajectory) -> list[int]:
    """Assistant turn of each token (0-based), -1 where the token is not ``sampled``.

    A turn is a maximal run of sampled tokens: the episode appends each turn's
    completion in one piece and closes it with environment tokens, so runs and
    turns coincide (only a last turn cut to zero tokens by the budget has no run).
    """
    out: list[int] = []
    turn, prev_sampled = -1, False
    for kind in traj.token_kinds:
        is_sampled = kind == "sampled"
        if is_sampled and not prev_sampled:
            turn += 1
        out.append(turn if is_sampled else -1)
        prev_sampled = is_sampled
    return out


def num_assistant_turns(traj: Trajectory) -> int:
    """Turns that per-turn credit assigns over: the episode's count, at least the sampled runs, at least 1."""
    runs = max(sampled_turns(traj), default=-1) + 1
    return max(traj.turns, runs, 1)


def collate_trajectories(
    trajs: list[Trajectory],
    advantages: list[float] | list[list[float]],
    pad_id: int,
    max_len: int | None = None,
) -> TrainBatch:
    """Right-padded training tensors of ``trajs``; ``advantages[i]`` belongs to ``trajs[i]``.

    ``advantages[i]`` is a float (trajectory credit) or, for every row, a list
    with one value per assistant turn (:func:`num_assistant_turns` of them).
    """
    if len(trajs) != len(advantages):
        raise ValueError(f"{len(trajs)} trajectories but {len(advantages)} advantages")
    if not trajs:
        raise ValueError("cannot collate an empty list of trajectories")
    if max_len is not None and max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    for traj in trajs:
        traj.validate()
    per_turn = [isinstance(a, list | tuple) for a in advantages]
    if any(per_turn) and not all(per_turn):
        raise ValueError("advantages mix per-trajectory floats and per-turn lists")
    if per_turn and per_turn[0]:
        for i, (traj, adv) in enumerate(zip(trajs, advantages)):
            if len(adv) != num_assistant_turns(traj):
                raise ValueError(f"trajectory {i}: {len(adv)} turn advantages for {num_assistant_turns(traj)} turns")

    lengths = [traj.num_tokens if max_len is None else min(traj.num_tokens, max_len) for traj in trajs]
    b, t = len(trajs), max(1, max(lengths))
    input_ids = torch.full((b, t), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((b, t), dtype=torch.long)
    loss_mask = torch.zeros((b, t), dtype=torch.float32)
    old_logprobs = torch.zeros((b, t), dtype=torch.float32)
    token_adv = torch.zeros((b, t), dtype=torch.float32) if per_turn[0] else None
    for i, (traj, n) in enumerate(zip(trajs, lengths)):
        input_ids[i, :n] = torch.tensor(traj.token_ids[:n], dtype=torch.long)
        attention_mask[i, :n] = 1
        sampled = torch.tensor([k == "sampled" for k in traj.token_kinds[:n]], dtype=torch.bool)  # [n]
        loss_mask[i, :n] = sampled.float()
        old_logprobs[i, :n] = torch.tensor([lp if lp is not None else 0.0 for lp in traj.logprobs[:n]])
        if token_adv is not None:
            token_adv[i, :n] = torch.tensor([advantages[i][k] if k >= 0 else 0.0 for k in sampled_turns(traj)[:n]])
    loss_mask[:, 0] = 0.0  # no logprob exists for the first token
    old_logprobs[:, 0] = 0.0
    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        loss_mask=loss_mask,
        old_logprobs=old_logprobs,
        advantages=token_adv if token_adv is not None else torch.tensor(advantages, dtype=torch.float32),
        truncated_tokens=[traj.num_tokens - n for traj, n in zip(trajs, lengths)],
    )
