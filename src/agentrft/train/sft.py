"""Supervised fine-tuning on demonstration trajectories (the warm start of the spectrum).

Out of the box the bundled model emits no well-formed tool call, so RL alone
cannot start; a short SFT on demonstrations (scripted oracle policies of the
environment, or a JSONL of conversations) gets it going. Only assistant
tokens are trained: the demonstration's token record marks them ``sampled``.
"""

from __future__ import annotations

import time

import torch

from agentrft.algo.batch import collate_trajectories
from agentrft.algo.logprobs import token_logprobs
from agentrft.algo.losses import sft_loss
from agentrft.config import JobConfig
from agentrft.errors import ConfigError
from agentrft.models.chat_format import ChatFormat
from agentrft.models.policy import Policy
from agentrft.rollout.episode import tools_for_row
from agentrft.tools.environment import EnvSpec
from agentrft.train.demonstrations import demonstration_trajectory, supervised_trajectory
from agentrft.train.context import TrainContext
from agentrft.train.optim import (MICRO_BATCH_POSITIONS, forward_positions, micro_batches, optimizer_step,
                                  shared_prefix)
from agentrft.types import TaskRow, Trajectory

def demonstrations_for(spec: EnvSpec, chat_format: ChatFormat, rows: list[TaskRow], policy_name: str) -> list[Trajectory]:
    """Run an environment oracle on each row and record its conversation as a trainable trajectory."""
    oracles = spec.oracles or {}
    if policy_name not in oracles:
        raise ConfigError(f"environment {spec.name!r} has no oracle {policy_name!r}; available: {', '.join(oracles) or 'none'}")
    out = []
    for row in rows:
        env = spec.make_env(row)
        env.setup(row)
        try:
            schemas = [t.schema() for t in tools_for_row(env, row)] or None
        finally:
            env.close()
        messages = oracles[policy_name](row)
        out.append(demonstration_trajectory(messages, schemas, chat_format, task_id=str(row.get("id", ""))))
    return out


def load_demonstrations_file(chat_format: ChatFormat, path: str) -> list[Trajectory]:
    """The rows of a file in OpenAI's supervised format as token records (invalid rows were reported or
    refused by the run's data check before this)."""
    from agentrft.datasets import load_jsonl_dataset

    return [supervised_trajectory(r, chat_format) for r in load_jsonl_dataset(path, kind="supervised").rows]


class SFTMethod:
    def prepare(self, cfg: JobConfig, policy: Policy, env: EnvSpec, train_rows: list[TaskRow]) -> list[Trajectory]:
        d = cfg.data
        if d.demonstrations_source():
            return load_demonstrations_file(policy.chat_format, d.demonstrations_source())
        return demonstrations_for(env, policy.chat_format, train_rows, d.demonstrations)

    def step(self, ctx: TrainContext, batch: list[Trajectory], step: int) -> dict[str, float]:
        policy, mb = ctx.policy, ctx.cfg.optim.micro_batch_size
        t0 = time.perf_counter()
        n_tok = sum(t.num_sampled_tokens for t in batch)
        total, nonfinite = 0.0, False
        ctx.optimizer.zero_grad(set_to_none=True)
        policy.model.train()
        prefix = shared_prefix(ctx, batch)
        # by length under a token budget: 8 demonstrations padded to their longest row as one pass held ~9 GB
        # of activations and ran 2.3x slower per token (see MICRO_BATCH_POSITIONS); same update up to rounding
        chunks = micro_batches(batch, mb, prefix, max_positions=MICRO_BATCH_POSITIONS)
        positions, tokens = forward_positions(batch, chunks, prefix)
        for rows in chunks:
            part = [batch[i] for i in rows]
            b = collate_trajectories(part, [0.0] * len(part), pad_id=policy.pad_token_id).to(policy.device)
            logp = token_logprobs(policy.model, b.input_ids, b.attention_mask, needed=b.loss_mask,
                                  prefix=prefix.for_rows(rows) if prefix else None)
            loss = sft_loss(logp, b.loss_mask) * (float(b.loss_mask.sum()) / max(1, n_tok))
            if not torch.isfinite(loss):
                nonfinite = True
                break
            loss.backward()
            total += float(loss.detach())
        if prefix is not None and not nonfinite:
            prefix.backward()
        stepped, norm = optimizer_step(ctx, skip=nonfinite)
        return {"loss": total if stepped else float("nan"), "skipped": 0.0 if stepped else 1.0, "grad_norm": norm,
                "tokens_trained": float(n_tok), "training_s": time.perf_counter() - t0,
                "shared_prefix_tokens": float(prefix.tokens if prefix is not None else 0),
                "decoder_positions": float(positions), "decoder_tokens": float(tokens)}
