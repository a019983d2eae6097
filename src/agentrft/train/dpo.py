"""Direct preference optimisation on preferred/rejected trajectory pairs.

Pairs come from a JSONL file, from two oracle policies of an environment
(e.g. efficient = chosen, verbose = rejected: prefer the cheaper agent), or
are mined from an RFT run's groups (``data.pairs_from_run``: best vs worst of
each task at each step, :func:`agentrft.train.demonstrations.mine_pairs`).
Mined pairs keep the exact tokens that were sampled, so the policy is trained
on what the model did rather than on a re-rendering of it.
The sequence log-probability sums only over trainable (assistant) tokens; the
reference is the frozen base (LoRA adapters disabled).
"""

from __future__ import annotations

import time

import torch
from tqdm import tqdm

from agentrft.algo.batch import collate_trajectories
from agentrft.algo.logprobs import token_logprobs
from agentrft.algo.losses import dpo_loss
from agentrft.config import JobConfig
from agentrft.errors import ConfigError
from agentrft.models.policy import Policy
from agentrft.tools.environment import EnvSpec
from agentrft.train.demonstrations import preference_pair
from agentrft.train.context import TrainContext
from agentrft.train.optim import optimizer_step
from agentrft.train.sft import demonstrations_for
from agentrft.types import TaskRow

def _sequence_logps(model, b) -> torch.Tensor:
    logp = token_logprobs(model, b.input_ids, b.attention_mask, needed=b.loss_mask)  # [B, T]
    return (logp * b.loss_mask).sum(dim=-1)  # [B]


def _pairs_from_run(cfg: JobConfig) -> list:
    from pathlib import Path

    from agentrft.jobs.store import DB_NAME, RunStore
    from agentrft.train.demonstrations import pairs_from_records

    d = cfg.data
    run_dir = Path(d.pairs_from_run)
    if not (run_dir / DB_NAME).is_file():
        raise ConfigError(f"data.pairs_from_run: {run_dir} has no {DB_NAME}; give the directory of a finished run")
    with RunStore(run_dir) as store:
        run = store.get_run() or {}
        records = store.trajectories()
    source_model = (run.get("resolved_config") or {}).get("model")
    if source_model is not None and source_model != cfg.model:
        raise ConfigError(f"data.pairs_from_run: {run_dir} sampled with model {source_model!r}, this job trains "
                          f"{cfg.model!r}; its token ids only mean something to the same tokenizer")
    pairs = pairs_from_records(records, d.pairs_min_margin)
    if not pairs:
        raise ConfigError(f"data.pairs_from_run: no group of the {len(records)} samples in {run_dir} has a reward "
                          f"spread of at least data.pairs_min_margin={d.pairs_min_margin}")
    return pairs


class DPOMethod:
    def prepare(self, cfg: JobConfig, policy: Policy, env: EnvSpec, train_rows: list[TaskRow]) -> list:
        d = cfg.data
        if d.pairs_source():
            from agentrft.datasets import load_jsonl_dataset

            rows = load_jsonl_dataset(d.pairs_source(), kind="preference").rows
            return [preference_pair(row, policy.chat_format) for row in rows]
        if d.pairs_from_run:
            return _pairs_from_run(cfg)
        chosen = demonstrations_for(env, policy.chat_format, train_rows, d.demonstrations)
        rejected = demonstrations_for(env, policy.chat_format, train_rows, d.rejected_demonstrations)
        return list(zip(chosen, rejected))

    def step(self, ctx: TrainContext, batch: list, step: int) -> dict[str, float]:
        policy = ctx.policy
        if not policy.is_lora:
            raise ConfigError("DPO needs a frozen reference; use LoRA (lora.enabled: true)")
        t0 = time.perf_counter()
        chosen = [c for c, _ in batch]
        rejected = [r for _, r in batch]
        b = collate_trajectories(chosen + rejected, [0.0] * (2 * len(batch)), pad_id=policy.pad_token_id).to(policy.device)
        # a step is three long passes over 2 x batch_size whole trajectories: say which one is running
        with tqdm(total=3, desc=f"dpo step {step}: reference", unit="pass", leave=False) as bar:
            with torch.no_grad(), policy.reference() as ref_model:
                ref = _sequence_logps(ref_model, b)
            bar.set_description(f"dpo step {step}: policy", refresh=False)
            bar.update(1)
            ctx.optimizer.zero_grad(set_to_none=True)
            policy.model.train()
            pol = _sequence_logps(policy.model, b)
            n = len(batch)
            loss, stats = dpo_loss(pol[:n], pol[n:], ref[:n], ref[n:], beta=ctx.cfg.dpo.beta)
            nonfinite = not torch.isfinite(loss)
            bar.set_description(f"dpo step {step}: backward", refresh=False)
            bar.update(1)
            if not nonfinite:
                loss.backward()
            stepped, norm = optimizer_step(ctx, skip=nonfinite)
            bar.update(1)
        out = {"loss": float(loss.detach()) if stepped else float("nan"), "skipped": 0.0 if stepped else 1.0,
               "grad_norm": norm, "training_s": time.perf_counter() - t0}
        out.update({k: float(v) for k, v in stats.items()})
        return out
