"""Reinforcement fine-tuning (GRPO family): the RFT step, one screen per phase.

    collect     n = group_size rollouts per task with real tool calls
    grade       one reward per trajectory (continuous, e.g. correctness × cost)
    advantages  per group (GRPO z-score, Dr.GRPO mean-centred, RLOO)
    loss        policy-gradient loss on sampled tokens only (PPO-clip, DAPO, GSPO)
    optimize    AdamW with grad clipping; non-finite steps are skipped
    monitor     (``monitors.enabled``) hacking probes, drift, a held-out grader on the live rollouts

Credit (``rft.credit``): by default the trajectory's reward reaches every
sampled token of every turn (tool output and prompt tokens are masked out by
their token kind); ``per_turn`` gives each assistant turn the advantage of its
discounted return, with the graders' per-turn rewards where they provide them
(:func:`agentrft.algo.advantages.turn_advantages`). Groups
whose rewards are all equal carry no signal and are filtered (and counted);
infrastructure failures are excluded before advantages are computed.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from agentrft.algo.advantages import Credit, compute_advantages, is_zero_variance, turn_advantages
from agentrft.algo.batch import collate_trajectories, num_assistant_turns
from agentrft.algo.importance import ISCorrection, importance_stats, importance_weights
from agentrft.algo.logprobs import token_logprobs, token_logprobs_and_entropy
from agentrft.algo.losses import LossConfig, policy_loss
from agentrft.config import JobConfig
from agentrft.errors import AgentRFTError
from agentrft.evaluation import grade_all, is_correct
from agentrft.models.policy import Policy
from agentrft.rollout.collector import collect_episodes
from agentrft.tools.environment import EnvSpec
from agentrft.train.context import TrainContext
from agentrft.train.demonstrations import cycle_batches
from agentrft.train.monitors import Monitors
from agentrft.train.optim import forward_positions, micro_batches, optimizer_step, shared_prefix
from agentrft.train.rollout_workers import ray_rollouts
from agentrft.types import TaskRow, Trajectory

class GraderFailure(AgentRFTError):
    """Too many grades failed: training on them would optimise the grader's bugs."""


RESAMPLE_SEED_STRIDE = 104_729
"""Offsets the data order and sampling seeds of each ``rft.resample_rounds`` round from the step's own."""


def _log_trajectories(ctx: TrainContext, step: int, trajs: list[Trajectory], grades: list,
                      advantages: dict[int, float | list[float]] | None = None) -> None:
    """Store a step's trajectories with their grades and, once computed, ``advantage``: what trajectory ``i``
    was trained with (a float, or one value per assistant turn with ``per_turn`` credit), None when it was not
    trained on (an infra failure, a filtered zero-variance group). The dashboard shows it on each sampled token."""
    advantages = advantages or {}
    ctx.store.log_trajectories(step, [{**t.to_dict(), "grade": g.to_dict(), "reward": g.reward,
                                       "advantage": advantages.get(i)} for i, (t, g) in enumerate(zip(trajs, grades))])


def _flat(trajs: list[Trajectory], grades: list, k: int, group: int) -> bool:
    """Whether task ``k``'s group gives no signal: under two usable rollouts, or all rewards equal."""
    rewards = [grades[i].reward for i in range(k * group, (k + 1) * group) if not trajs[i].is_infra_failure]
    return len(rewards) < 2 or bool(is_zero_variance(torch.tensor(rewards)))


class RFTMethod:
    monitors: Monitors | None = None
    """The run's live monitors (``monitors.enabled``), built at its first step."""

    def prepare(self, cfg: JobConfig, policy: Policy, env: EnvSpec, train_rows: list[TaskRow]) -> list[TaskRow]:
        return list(train_rows)

    def step(self, ctx: TrainContext, batch: list[TaskRow], step: int) -> dict[str, float]:
        cfg = ctx.cfg
        group = cfg.rft.group_size

        # 1-2. collect and grade; with rft.resample_rounds, tasks whose groups carry no signal are topped up
        rcfg = cfg.step_rollout(step)
        rows, trajs, grades, sampling_s, grading_s = self._collect(ctx, batch, rcfg, step)
        resampled = 0
        for r in range(1, cfg.rft.resample_rounds + 1):
            missing = len(batch) - sum(not _flat(trajs, grades, k, group) for k in range(len(rows)))
            if missing <= 0:
                break
            # a pure function of (seed, step, round): a resumed run draws and samples the same tasks
            extra = cycle_batches(ctx.items, missing, step, seed=cfg.seed + RESAMPLE_SEED_STRIDE * r)
            seeded = rcfg.model_copy(update={"seed": rcfg.seed + RESAMPLE_SEED_STRIDE * r})
            try:
                more = self._collect(ctx, extra, seeded, step)
            except GraderFailure:
                _log_trajectories(ctx, step, trajs, grades)  # the rounds before the failed one
                raise
            rows, trajs, grades = rows + more[0], trajs + more[1], grades + more[2]
            sampling_s, grading_s, resampled = sampling_s + more[3], grading_s + more[4], resampled + len(extra)

        # 3. advantages (per group; infra failures excluded) ------------------
        groups: list[list[int]] = []
        for k in range(len(rows)):
            idx = [k * group + j for j in range(group) if not trajs[k * group + j].is_infra_failure]
            groups.append(idx)
        kept_groups = [idx for idx in groups if len(idx) >= 2]
        estimator = cfg.rft.advantage
        if cfg.rft.credit is Credit.PER_TURN:
            advs, zero_var = [], []
            for idx in kept_groups:
                try:
                    a, zv = turn_advantages([grades[i].reward for i in idx], [grades[i].turn_rewards for i in idx],
                                            [num_assistant_turns(trajs[i]) for i in idx], estimator, cfg.rft.gamma)
                except ValueError as e:  # a grader's turn_rewards that do not fit its trajectory
                    _log_trajectories(ctx, step, trajs, grades)
                    raise GraderFailure(f"step {step}: per-turn credit cannot use the grades of task "
                                        f"{trajs[idx[0]].task_id!r}: {e}") from None
                advs.append(a)
                zero_var.append(zv)
        else:
            advs, zero_var = compute_advantages([[grades[i].reward for i in idx] for idx in kept_groups], estimator)
        train_idx, train_adv, trained_groups = [], [], 0
        for idx, adv, zv in zip(kept_groups, advs, zero_var):
            if (zv and cfg.rft.filter_zero_variance) or trained_groups == len(batch):
                continue
            train_idx.extend(idx)
            train_adv.extend(adv)
            trained_groups += 1
        # the step's trajectories, each with the advantage it is trained with (None: not trained on)
        _log_trajectories(ctx, step, trajs, grades, dict(zip(train_idx, train_adv)))

        # 4-5. loss and optimizer ---------------------------------------------
        t0 = time.perf_counter()
        if train_idx:
            ctx.sampler.release()  # what it built for these weights is stale after the update: free it first
        train_stats = self._update(ctx, [trajs[i] for i in train_idx], train_adv, rcfg.temperature) if train_idx else {
            "loss": 0.0, "skipped": 0.0, "grad_norm": 0.0}
        training_s = time.perf_counter() - t0

        ok = [i for i, t in enumerate(trajs) if not t.is_infra_failure]
        n_ok = max(1, len(ok))
        rewards = torch.tensor([grades[i].reward for i in ok] or [0.0])
        metrics: dict[str, Any] = {
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std()) if len(ok) > 1 else 0.0,
            "accuracy": sum(is_correct(grades[i], 0.99) for i in ok) / n_ok,
            "tool_calls_per_rollout": sum(len(trajs[i].tool_calls) for i in ok) / n_ok,
            "tool_errors_per_rollout": sum(trajs[i].num_tool_errors for i in ok) / n_ok,
            "tokens_mean": sum(trajs[i].num_tokens for i in ok) / n_ok,
            "sampled_tokens_mean": sum(trajs[i].num_sampled_tokens for i in ok) / n_ok,
            "rollout_span_s_mean": sum(trajs[i].timings.get("total_s", 0.0) for i in ok) / n_ok,  # time in the lockstep batch
            "infra_failures": float(len(trajs) - len(ok)),
            "grader_errors": float(sum(g.has_error for g in grades)),
            "zero_variance_groups": float(sum(zero_var)),
            "trained_rollouts": float(len(train_idx)),
            "sampling_s": sampling_s,
            "grading_s": grading_s,
            "training_s": training_s,
        }
        if ctx.weight_sync.version is not None:  # the weights this step's rollouts were sampled with
            metrics["policy_version"] = float(ctx.weight_sync.version)
        if cfg.rft.resample_rounds:
            metrics["resampled_tasks"] = float(resampled)
        for name in grades[0].sub_rewards if grades else []:
            vals = [grades[i].sub_rewards.get(name, 0.0) for i in ok]
            metrics[f"reward/{name}"] = sum(vals) / n_ok
        metrics.update(train_stats)

        # 6. live monitors: hacking probes, drift, a held-out grader; alerts are store events (train/monitors.py)
        if cfg.monitors.enabled:
            self.monitors = Monitors.for_run(ctx, reuse=self.monitors)
            metrics.update(self.monitors.watch(step, trajs, grades, [rows[i // group] for i in range(len(trajs))]))
        return metrics

    def _collect(self, ctx: TrainContext, rows: list[TaskRow], rcfg, step: int):
        """Roll out ``group_size`` samples of each row and grade them (the step stores them once their
        advantages are known). Returns ``(rows, trajectories, grades, sampling_s, grading_s)``."""
        cfg, group = ctx.cfg, ctx.cfg.rft.group_size
        workers = ray_rollouts(ctx) if cfg.runtime.backend == "ray" else None  # started by the first step
        t0 = time.perf_counter()
        if workers is not None:  # rolled out and graded on the workers: grading overlaps the rollouts
            trajs, grades = workers.collect(rows, rcfg, samples_per_task=group)
            sampling_s, grading_s = time.perf_counter() - t0, 0.0
        else:
            trajs = collect_episodes(rows, ctx.env.make_env, ctx.sampler, ctx.policy.chat_format, rcfg,
                                     samples_per_task=group, batch_requests=cfg.sampler.backend == "local")
            sampling_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            grades = grade_all(ctx.grade, trajs, [rows[i // group] for i in range(len(trajs))])
            grading_s = time.perf_counter() - t0
        for t in trajs:
            t.policy_version = ctx.weight_sync.version  # what sampled them (the sync pushes after each update)
        # sample_parse_error is the model's failure (e.g. no number in its answer); the budget is for grader faults.
        faults = [g for g in grades if any(v for k, v in g.errors.items() if k != "sample_parse_error")]
        error_rate = len(faults) / max(1, len(grades))
        if error_rate > cfg.training.max_grader_error_rate:
            _log_trajectories(ctx, step, trajs, grades)  # the failed grades with their flags: the evidence
            raise GraderFailure(
                f"step {step}: {error_rate:.0%} of grades carry grader errors (limit "
                f"{cfg.training.max_grader_error_rate:.0%}); fix the grader before training on it -- "
                f"first error: {next((m for g in faults for m in g.error_messages), 'see the trajectories in run.db')}")
        return list(rows), trajs, grades, sampling_s, grading_s

    def _update(self, ctx: TrainContext, trajs: list[Trajectory], advantages: list[float],
                temperature: float) -> dict[str, float]:
        cfg, policy = ctx.cfg, ctx.policy
        loss_cfg = LossConfig(loss=cfg.rft.loss, clip_eps_low=cfg.rft.clip_eps_low,
                              clip_eps_high=cfg.rft.clip_eps_high, beta=cfg.rft.beta,
                              aggregation=cfg.rft.aggregation, max_tokens=cfg.rollout.max_total_tokens)
        mb = cfg.optim.micro_batch_size
        correction = resolved_is_correction(cfg)
        behaviour: dict[int, torch.Tensor] = {}  # micro-batch -> the trainer's logprobs at the update's start
        is_totals: dict[str, float] = {}  # the sampler/trainer mismatch, measured once (first pass)
        totals: dict[str, float] = {}
        work = {"decoder_positions": 0.0, "decoder_tokens": 0.0}
        skipped = 0.0
        grad_norm = 0.0
        for n_pass in range(cfg.rft.updates_per_batch):
            ctx.optimizer.zero_grad(set_to_none=True)
            n_seq = len(trajs)
            n_tok = sum(t.num_sampled_tokens for t in trajs)
            nonfinite = False
            policy.model.train()
            prefix = shared_prefix(ctx, trajs)  # forwarded again each pass: the weights changed
            chunks = micro_batches(trajs, mb, prefix)
            positions, tokens = forward_positions(trajs, chunks, prefix)
            work["decoder_positions"] += positions
            work["decoder_tokens"] += tokens
            for c, rows in enumerate(chunks):
                part = [trajs[i] for i in rows]
                b = collate_trajectories(part, [advantages[i] for i in rows], pad_id=policy.pad_token_id).to(policy.device)
                policy.model.train()
                # entropy of the sampled positions' distributions: the collapse detector in the step metrics
                logp, entropy = token_logprobs_and_entropy(policy.model, b.input_ids, b.attention_mask,
                                                           temperature=temperature, needed=b.loss_mask,
                                                           prefix=prefix.for_rows(rows) if prefix else None)
                ref = None
                if cfg.rft.beta > 0:
                    with torch.no_grad(), policy.reference() as ref_model:
                        ref = token_logprobs(ref_model, b.input_ids, b.attention_mask, temperature=temperature,
                                             needed=b.loss_mask)
                old, is_weights = b.old_logprobs, None
                if correction is not None:  # decoupled PPO: ratio vs the trainer's own start-of-update logprobs
                    old = behaviour.setdefault(c, logp.detach())  # first pass: these weights, so no extra forward
                    is_weights = importance_weights(old, b.old_logprobs, b.loss_mask, correction, cfg.rft.is_cap)
                out = policy_loss(logp, old, b.advantages, b.loss_mask, loss_cfg, ref_logprobs=ref,
                                  entropy=entropy, weights=is_weights)
                # Weight micro-batches so the step's loss equals one big batch's.
                weight = float(b.loss_mask.sum()) / max(1, n_tok) if loss_cfg.aggregation == "token_mean" else len(part) / n_seq
                if is_weights is not None and n_pass == 0:
                    for k, v in importance_stats(old, b.old_logprobs, b.loss_mask, is_weights, cfg.rft.is_cap).items():
                        is_totals[k] = is_totals.get(k, 0.0) + v * weight
                loss = out.loss * weight
                if not torch.isfinite(loss):
                    nonfinite = True
                    break
                loss.backward()
                totals["loss"] = totals.get("loss", 0.0) + float(loss.detach())
                for k, v in out.stats.items():
                    totals[k] = totals.get(k, 0.0) + float(v) * weight
            if prefix is not None and not nonfinite:
                prefix.backward()
            stepped, grad_norm = optimizer_step(ctx, skip=nonfinite)
            if not stepped:
                skipped = 1.0
                break
        totals = {k: v / max(1, cfg.rft.updates_per_batch) for k, v in totals.items()}
        totals.update(is_totals)
        totals.update(work)  # summed over the passes: the decoder's work this step
        totals["shared_prefix_tokens"] = float(prefix.tokens if prefix is not None else 0)
        if skipped:
            totals["loss"] = float("nan")
        totals.update(skipped=skipped, grad_norm=grad_norm)
        return totals


def resolved_is_correction(cfg: JobConfig) -> ISCorrection | None:
    """``rft.is_correction``, its default resolved: ``token_truncate`` when another engine samples (a remote
    sampler, asynchronous or not), none when the local sampler samples the trainer's own weights.

    With a mode, :meth:`RFTMethod._update` is decoupled PPO (Hilton et al. 2022; :mod:`agentrft.algo.importance`):
    the behaviour logprobs are the trainer's own at the start of the update (the first pass's, detached), the
    clipped ratio runs against them, and each token's surrogate is weighted by the truncated
    ``exp(behaviour - sampler)``. Without one (``off``) the ratio runs against the sampler's logprobs."""
    if cfg.rft.is_correction == "off":
        return None
    if cfg.rft.is_correction is not None:
        return ISCorrection(cfg.rft.is_correction)
    return ISCorrection.TOKEN_TRUNCATE if cfg.rft.asynchronous or cfg.sampler.backend != "local" else None
