"""What every method's training pass shares: the optimizer, the shared-prefix plan, and the optimizer step.

:func:`build_optimizer` makes AdamW and its schedule for a policy.
:func:`shared_prefix` plans which leading tokens of a step's sequences are
forwarded once (:class:`PrefixPlan`). :func:`micro_batches` splits them into
forward/backward passes: by row count (RFT), or by length under a token budget
(SFT, :data:`MICRO_BATCH_POSITIONS`). :func:`optimizer_step` clips, checks
finiteness, and steps or skips: a non-finite loss or gradient never reaches
the weights; the update is skipped and reported (``skipped`` metric, a
``nonfinite_skip`` event), and the runner stops after ``max_bad_steps`` in a
row with the last checkpoint intact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from agentrft.algo.logprobs import PrefixRows, SharedPrefix, common_prefix_length, has_plain_head
from agentrft.config import JobConfig
from agentrft.models.policy import Policy
from agentrft.train.context import TrainContext
from agentrft.types import Trajectory


MIN_GROUP_EXTENSION = 64
"""A group's own prefix is forwarded separately only when it adds at least this many tokens to the common one.

Measured on the quickstart's RFT step 1 (16 finance rollouts, 23,889 tokens, LoRA, 2 cores): no sharing 134 s,
the common 391 tokens once 110 s, plus each group's ~25-token question once 118 s: a short extension's own
forward and backward cost more than the tokens they save."""


class PrefixPlan:
    """Which leading tokens of a step's trajectories are forwarded once (see :class:`SharedPrefix`).

    Two levels: the tokens all trajectories share (system prompt, tool schemas), and on top of them the
    tokens the rollouts of one task share (its question). Each is forwarded once per optimizer pass; a
    micro-batch reads the longest prefix all its rows have. Trained positions always lie after it.
    """

    def __init__(self, ctx: TrainContext, trajs: list[Trajectory], min_tokens: int) -> None:
        model, device = ctx.policy.model, ctx.policy.device
        self._made: list[SharedPrefix] = []
        self._tokens = 0
        self._limit = [t.token_kinds.index("sampled") - 1 if "sampled" in t.token_kinds else t.num_tokens
                       for t in trajs]  # every trained position must lie after the prefix
        root_len = min(common_prefix_length([t.token_ids for t in trajs]), min(self._limit))
        root = self._make(model, trajs[0].token_ids[:root_len], None, device) if root_len >= min_tokens else None
        self.rows: list[SharedPrefix | None] = [root] * len(trajs)
        groups: dict[str, list[int]] = {}
        for i, t in enumerate(trajs):
            groups.setdefault(t.task_id, []).append(i)
        for idx in groups.values():
            if len(idx) < 2:
                continue
            n = min(common_prefix_length([trajs[i].token_ids for i in idx]), min(self._limit[i] for i in idx))
            base = root.length if root is not None else 0
            if n >= max(min_tokens, base + MIN_GROUP_EXTENSION):
                child = self._make(model, trajs[idx[0]].token_ids[:n], root, device)
                for i in idx:
                    self.rows[i] = child

    def _make(self, model, ids, parent, device) -> SharedPrefix:
        prefix = SharedPrefix(model, torch.tensor(ids, device=device), parent=parent)
        self._made.append(prefix)
        self._tokens += prefix.length - (parent.length if parent is not None else 0)
        return prefix

    @property
    def tokens(self) -> int:
        """Tokens forwarded once instead of per trajectory (the metric ``shared_prefix_tokens``)."""
        return self._tokens

    def for_rows(self, rows: Sequence[int]) -> SharedPrefix | PrefixRows | None:
        """The prefix of the micro-batch made of trajectories ``rows`` (indices), or None when they share none."""
        made = [self.rows[i] for i in rows]
        if not made or any(p is None for p in made):
            return None
        if all(p is made[0] for p in made):
            return made[0]
        return PrefixRows(made, min(p.length for p in made))  # type: ignore[arg-type, union-attr]

    def length_for(self, rows: Sequence[int]) -> int:
        """How many leading tokens of micro-batch ``rows`` come from the prefix (0 when none)."""
        prefix = self.for_rows(rows)
        return prefix.length if prefix is not None else 0

    def backward(self) -> None:
        """Send the collected gradients through the prefixes: each group's before the common one it extends."""
        for prefix in reversed(self._made):
            prefix.backward()


MICRO_BATCH_POSITIONS = 1024
"""Decoder positions (rows x padded length, past the shared prefix) a budgeted micro-batch may run at once.

Training keeps ~1.3 MB of activations per position for the bundled 135M model in float32 (30 layers;
measured with autograd's saved-tensor hooks), so 8 demonstrations padded to their longest, 837 tokens,
held ~8.7 GB. ``bench/sft_throughput.py`` (8 function-calling demonstrations of 244-889 tokens per step,
LoRA r16, CPU): with this budget 110 instead of 47 tokens per CPU second and a peak RSS of 2.8 instead of
10.8 GB; padding falls from 44 % to 4 % of the positions, and attention, quadratic in the padded length,
no longer runs over 837 positions for every row. Throughput was flat from 550 to 1,500 positions per
micro-batch. A row longer than the budget still runs, alone."""


def micro_batches(trajs, size: int, plan: PrefixPlan | None, max_positions: int | None = None) -> list[list[int]]:
    """The step's trajectories (indices) in micro-batches of at most ``size``, padded as little as the order allows.

    A micro-batch is padded to its longest row, so rows of similar length belong together. Two orders are
    costed by the positions their micro-batches run through the decoder (past the shared prefix each reads):
    the given one (a group's rollouts side by side, reading their group's prefix) and longest first; the
    cheaper wins (the given one on a tie). The update does not depend on the order: micro-batch losses are
    weighted sums of per-row terms.

    ``max_positions`` (a token budget, e.g. :data:`MICRO_BATCH_POSITIONS`): longest first, a micro-batch
    takes the next row while its rows times its longest row's positions stay within the budget (a row
    longer than the budget alone); this bounds activation memory by tokens, not rows.
    """
    given = list(range(len(trajs)))
    longest_first = sorted(given, key=lambda i: -trajs[i].num_tokens)
    if max_positions is not None:
        return _budgeted(trajs, longest_first, size, plan, max_positions)
    split = [[order[s : s + size] for s in range(0, len(order), size)] for order in (given, longest_first)]
    costs = [forward_positions(trajs, chunks, plan)[0] for chunks in split]
    return split[1] if costs[1] < costs[0] else split[0]


def _budgeted(trajs, longest_first: list[int], size: int, plan: PrefixPlan | None, budget: int) -> list[list[int]]:
    """Longest first: a micro-batch takes the next row while it has fewer than ``size`` and fits ``budget``."""
    chunks: list[list[int]] = []
    for i in longest_first:
        if chunks and len(chunks[-1]) < size:
            grown = chunks[-1] + [i]
            if _padded_positions(trajs, grown, plan) <= budget:
                chunks[-1] = grown
                continue
        chunks.append([i])
    return chunks


def _padded_positions(trajs, chunk: list[int], plan: PrefixPlan | None) -> int:
    """Positions micro-batch ``chunk`` runs through the decoder past its shared prefix, padding included."""
    p = plan.length_for(chunk) if plan is not None else 0
    return len(chunk) * (max(trajs[i].num_tokens for i in chunk) - p)


def forward_positions(trajs, chunks: list[list[int]], plan: PrefixPlan | None) -> tuple[int, int]:
    """(positions, tokens) the decoder runs for ``chunks`` of ``trajs``: with padding, and without it.

    Both count a shared prefix's own tokens once. ``tokens`` is the work the update needs (the FLOP count of
    ``bench/grpo_vs_trl.py``); ``positions - tokens`` is padding.
    """
    positions = tokens = plan.tokens if plan is not None else 0
    for chunk in chunks:
        p = plan.length_for(chunk) if plan is not None else 0
        positions += _padded_positions(trajs, chunk, plan)
        tokens += sum(trajs[i].num_tokens - p for i in chunk)
    return positions, tokens


def shared_prefix(ctx: TrainContext, trajs: list[Trajectory]) -> PrefixPlan | None:
    """The step's :class:`PrefixPlan`, or ``None`` when ``optim.shared_prefix_min_tokens`` is 0 or the model's
    head is not plain (the prefix needs the LM-head-on-trained-positions path)."""
    min_tokens = ctx.cfg.optim.shared_prefix_min_tokens
    if not min_tokens or len(trajs) < 2 or not has_plain_head(ctx.policy.model):
        return None
    return PrefixPlan(ctx, trajs, min_tokens)


def optimizer_step(ctx: TrainContext, skip: bool = False) -> tuple[bool, float]:
    """Clip and apply the accumulated gradients; returns (stepped, grad_norm). After a step the sampler is
    released (:meth:`Sampler.release`), so nothing sampled later sees the old weights. The scheduler steps
    exactly when the weights do: :func:`agentrft.train.weight_sync.policy_version` counts on it."""
    params = ctx.policy.trainable_parameters()
    if skip:
        ctx.optimizer.zero_grad(set_to_none=True)
        return False, float("nan")
    for p in params:  # a sparse embedding gradient that met no dense one (see policy._sparse_tied_embedding_grad)
        if p.grad is not None and p.grad.is_sparse:
            p.grad = p.grad.to_dense()
    norm = torch.nn.utils.clip_grad_norm_(params, ctx.cfg.optim.max_grad_norm)
    norm_f = float(norm)
    if not math.isfinite(norm_f):
        ctx.optimizer.zero_grad(set_to_none=True)
        return False, norm_f
    ctx.optimizer.step()
    # The sampler's prefix cache holds keys/values computed with the old weights, and its fused decoder a
    # copy of the old weights. It also watches the parameters' version counters, but fused optimizer kernels
    # write without bumping them (measured: torch 2.13's fused AdamW leaves ``_version`` unchanged), so say
    # it explicitly.
    ctx.sampler.release()
    ctx.scheduler.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    return True, norm_f


def build_optimizer(cfg: JobConfig, policy: Policy, total_steps: int):
    """AdamW over the policy's trainable parameters and its learning-rate schedule (linear warm-up, then
    constant)."""
    opt = torch.optim.AdamW(
        policy.trainable_parameters(),
        lr=cfg.optim.learning_rate,
        betas=tuple(cfg.optim.betas),
        weight_decay=cfg.optim.weight_decay,
        fused=cfg.optim.fused,
    )
    warmup = cfg.optim.warmup_steps

    def schedule(step: int) -> float:  # linear warm-up, then constant
        return min(1.0, (step + 1) / warmup) if warmup else 1.0

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)
