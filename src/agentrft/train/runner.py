"""The job runner: ``agentrft train CONFIG.yaml`` for SFT, DPO and RFT.

One loop for every method::

    for step in 1..total:            # data position == step (pure function)
        metrics = method.step(batch)  # collect → grade → advantages → loss → optimizer (RFT)
        log metrics; eval every eval_interval; checkpoint atomically; early stop

What makes it operable:

* every run has a directory and rows in an embedded SQLite store: resolved
  config, dataset/grader/base-model hashes, events, per-step metrics,
  sampled trajectories and checkpoints (:mod:`agentrft.jobs`);
* checkpoints are atomic and hold model, optimizer, scheduler, RNG states and
  the step, so ``--resume`` continues exactly where the last one left off —
  the batch of a step is a pure function of (seed, step), and so is the
  sampling seed of a step;
* a non-finite loss or gradient skips the update (reported); ``max_bad_steps``
  in a row stop the run with the last checkpoint intact.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from agentrft.config import JobConfig, Method
from agentrft.envs.registry import EnvSpec, get_env
from agentrft.errors import AgentRFTError, ConfigError
from agentrft.evaluation import evaluate_rows, summarize
from agentrft.jobs.checkpoint import load_latest_checkpoint, restore_checkpoint, save_checkpoint
from agentrft.jobs.store import DB_NAME, RunStore, hash_file, hash_json
from agentrft.rollout.episode import RolloutConfig
from agentrft.rollout.hf_sampler import HFSampler
from agentrft.train.demonstrations import steps_per_epoch
from agentrft.train.policy import Policy, build_optimizer, build_policy


class TrainingStopped(AgentRFTError):
    """The run stopped on purpose (too many bad steps, grader error budget, ...)."""


@dataclass
class TrainContext:
    """Everything a method's step needs; built once per run."""

    cfg: JobConfig
    policy: Policy
    env: EnvSpec
    grade: Callable
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sampler: HFSampler
    store: RunStore
    items: list[Any] = field(default_factory=list)


class TrainingMethod(Protocol):
    def prepare(self, ctx: TrainContext, train_rows: list[dict]) -> list[Any]:
        """Turn task rows into the items a step consumes (tasks, demonstrations, pairs)."""
        ...

    def step(self, ctx: TrainContext, batch: list[Any], step: int) -> dict[str, float]:
        """One optimizer step; returns metrics (must include ``loss`` and ``skipped``)."""
        ...


def _methods() -> dict[Method, TrainingMethod]:
    from agentrft.train.dpo import DPOMethod
    from agentrft.train.rft import RFTMethod
    from agentrft.train.sft import SFTMethod

    return {Method.SFT: SFTMethod(), Method.DPO: DPOMethod(), Method.RFT: RFTMethod()}


@dataclass
class RunResult:
    run_dir: Path
    steps: int
    final_eval: dict
    best_eval_reward: float | None
    stopped_early: bool = False
    policy: Policy | None = None  # the trained policy, for callers that evaluate further (quickstart)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def load_rows(env: EnvSpec, split: str, file: str | None, limit: int | None) -> list[dict]:
    if file:
        from agentrft.datasets import load_jsonl_dataset

        rows = load_jsonl_dataset(file).rows
    else:
        if split not in env.splits:
            raise ConfigError(f"environment {env.name!r} has no split {split!r}; splits: {', '.join(env.splits)}")
        rows = env.load_split(split)
    return rows[:limit] if limit else rows


def eval_policy(ctx: TrainContext, rows: list[dict], seed: int, step: int) -> dict:
    """Roll out and grade the validation rows; store their trajectories in run.db (``split='validation'``)."""
    r = ctx.cfg.rollout
    rcfg = RolloutConfig(max_turns=r.max_turns, max_new_tokens=r.max_new_tokens, max_total_tokens=r.max_total_tokens,
                         temperature=r.eval_temperature, top_p=1.0, tool_timeout_s=r.tool_timeout_s,
                         max_tool_calls=r.max_tool_calls, seed=seed)
    t0 = time.perf_counter()
    graded = evaluate_rows(rows, ctx.env, ctx.sampler, ctx.policy.chat_format, rcfg, samples=1, batch_size=16,
                           grade=ctx.grade)
    summary = summarize(graded, time.perf_counter() - t0)
    ctx.store.log_trajectories(step, [{**g.trajectory.to_dict(), "grade": g.grade.to_dict(), "reward": g.grade.reward}
                                      for g in graded], split="validation")
    return summary


def _runtime() -> dict[str, Any]:
    """What this process computes with: recorded as an event each time a run starts or resumes."""
    from agentrft import allocator

    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "allocator": allocator.active()}


def run_job(cfg: JobConfig, *, resume: bool = False, model=None, tokenizer=None,
            grade: Callable | None = None, log: Callable[[str], None] = print) -> RunResult:
    """Run a training job to completion (or early stop); returns where it lives and its final eval.

    ``grade`` (a ``(trajectory, row) -> Grade`` function) overrides the reward
    for Python callers; from YAML, use the ``grader`` spec.
    """
    run_dir = Path(cfg.out_dir or f"runs/{cfg.method.value}-{time.strftime('%Y%m%d-%H%M%S')}")
    if (run_dir / "run.db").exists() and not resume:
        raise ConfigError(f"run directory {run_dir} already holds a run; pass --resume to continue it or choose another out_dir")
    store = RunStore(run_dir)
    seed_everything(cfg.seed)

    env = get_env(cfg.data.env)
    if grade is not None and cfg.grader is not None:
        raise ConfigError("give the reward either as a grader spec in the config or as a function, not both")
    grade = grade or env.grade
    if cfg.grader is not None:
        from agentrft.graders import load_grader

        grader = load_grader(cfg.grader)
        grade = grader.grade  # (sample: Trajectory, item: row) -> Grade
    policy = build_policy(cfg, model, tokenizer)
    if cfg.init_from:
        _init_from(policy, Path(cfg.init_from))
    train_rows = load_rows(env, cfg.data.train_split, cfg.data.train_file, cfg.data.limit_train)
    eval_rows = load_rows(env, cfg.data.eval_split, cfg.data.eval_file, cfg.data.limit_eval)[: cfg.training.eval_samples]
    if cfg.tools is not None:  # tasks from files, tools on external servers
        from agentrft.envs.external import external_env_spec, load_tools_config

        env = external_env_spec(train_rows, load_tools_config(cfg.tools), grade)

    method = _methods()[cfg.method]
    sampler = HFSampler(policy.model, pad_token_id=policy.pad_token_id, cpu_matmul=cfg.training.cpu_matmul)
    ctx = TrainContext(cfg, policy, env, grade, None, None, sampler, store)  # type: ignore[arg-type]
    ctx.items = method.prepare(ctx, train_rows)
    total = cfg.training.max_steps or steps_per_epoch(len(ctx.items), cfg.training.batch_size) * cfg.training.n_epochs
    ctx.optimizer, ctx.scheduler = build_optimizer(cfg, policy, total)

    state: dict[str, Any] = {"step": 0, "best_eval_reward": None, "bad_steps": 0, "evals_since_best": 0}
    if resume:
        info = load_latest_checkpoint(run_dir)
        if info is None:
            store.log_event("resume", "no checkpoint found; starting from step 0")
            log("resume: no checkpoint yet, starting from step 0")
        else:
            state.update(restore_checkpoint(info, policy.model, ctx.optimizer, ctx.scheduler))
            store.discard_after(state["step"])  # rows of steps after the checkpoint are replayed
            store.log_event("resume", f"resumed from step {state['step']}", {"path": str(info.path)}, step=state["step"])
            log(f"resume: continuing after step {state['step']} from {info.path}")
    if store.get_run() is None:
        store.create_run(
            run_id=run_dir.name,
            method=cfg.method.value,
            resolved_config=cfg.model_dump(mode="json"),
            hashes=_hashes(cfg, env, train_rows, grade),
            created_at=time.time(),
        )
    store.set_status("running")
    rt = _runtime()
    store.log_event("runtime", f"torch {rt['torch']}, {rt['threads']} threads, {rt['allocator']} allocator", rt,
                    step=state["step"])

    from tqdm import tqdm

    last_eval: dict | None = None
    stopped_early = False
    bar = tqdm(total=total, initial=state["step"], desc=f"{cfg.method.value}", unit="step", leave=False)
    try:
        while state["step"] < total:
            step = state["step"] + 1
            from agentrft.train.demonstrations import cycle_batches

            batch = cycle_batches(ctx.items, cfg.training.batch_size, step, cfg.seed)
            t0 = time.perf_counter()
            metrics = method.step(ctx, batch, step)
            metrics["step_time_s"] = time.perf_counter() - t0
            metrics["lr"] = ctx.scheduler.get_last_lr()[0]
            store.log_metrics(step, metrics, split="train")
            if metrics.get("skipped"):
                state["bad_steps"] += 1
                store.log_event("nonfinite_skip", f"step {step}: non-finite loss or gradient; update skipped", step=step)
                if state["bad_steps"] >= cfg.training.max_bad_steps:
                    raise TrainingStopped(
                        f"{state['bad_steps']} steps in a row had a non-finite loss or gradient; stopping "
                        f"(the last checkpoint in {run_dir / 'checkpoints'} is intact)")
            else:
                state["bad_steps"] = 0
            state["step"] = step

            eval_now = bool(eval_rows) and (step % cfg.training.eval_interval == 0 or step == total)
            metric = None
            if eval_now:
                last_eval = eval_policy(ctx, eval_rows, seed=cfg.seed, step=step)
                metric = last_eval["reward_mean"]
                store.log_metrics(step, _numeric(last_eval), split="validation")
                best = state["best_eval_reward"]
                if best is None or metric > best + cfg.training.early_stop_min_delta:
                    state["best_eval_reward"], state["evals_since_best"] = metric, 0
                else:
                    state["evals_since_best"] += 1
            if eval_now or step % cfg.training.checkpoint_interval == 0 or step == total:
                path = save_checkpoint(run_dir, step, policy.model, ctx.optimizer, ctx.scheduler, trainer_state=dict(state),
                                       metric=metric, keep_best_k=cfg.training.keep_best_k)
                store.record_checkpoint(step, str(path), metric, is_best=metric is not None and metric == state["best_eval_reward"])
            log(_one_line(step, total, metrics, last_eval if eval_now else None))
            bar.update(1)
            patience = cfg.training.early_stop_patience
            if patience and state["evals_since_best"] >= patience:
                store.log_event("early_stop", f"validation reward plateaued for {patience} evals", step=step)
                stopped_early = True
                break
    except AgentRFTError as e:  # stopped on purpose: bad steps, grader error budget, ...
        store.set_status("failed", str(e))
        raise
    except BaseException as e:
        store.set_status("failed", f"{type(e).__name__}: {e}")
        raise
    finally:
        bar.close()
    if last_eval is None:
        last_eval = eval_policy(ctx, eval_rows, seed=cfg.seed, step=state["step"]) if eval_rows else {}
    store.set_status("completed")
    return RunResult(run_dir, state["step"], last_eval, state["best_eval_reward"], stopped_early, policy)


def _numeric(d: dict) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _one_line(step: int, total: int, m: dict, ev: dict | None) -> str:
    parts = [f"step {step}/{total}", f"loss {m.get('loss', float('nan')):.4f}"]
    for key, fmt in (("reward_mean", "reward {:.3f}"), ("tool_calls_per_rollout", "calls {:.2f}"),
                     ("zero_variance_groups", "zero-var {:.0f}"), ("grad_norm", "|g| {:.3f}"),
                     ("sampling_s", "sample {:.1f}s"), ("training_s", "train {:.1f}s")):
        if key in m and isinstance(m[key], (int, float)) and math.isfinite(m[key]):
            parts.append(fmt.format(m[key]))
    if ev:
        parts.append(f"| val reward {ev['reward_mean']:.3f} acc {ev['accuracy']:.1%}")
    return "  ".join(parts)


def _hashes(cfg: JobConfig, env: EnvSpec, rows: list[dict], grade) -> dict[str, str]:
    from agentrft.models.loading import resolve_model

    hashes = {"dataset": hash_json(rows), "config": hash_json(cfg.model_dump(mode="json"))}
    # what SFT/DPO actually train on when it is not generated from the task rows
    for key, path in (("demonstrations", cfg.data.demonstrations_file), ("pairs", cfg.data.pairs_file)):
        if path and Path(path).is_file():
            hashes[key] = hash_file(path)
    if cfg.data.pairs_from_run and (Path(cfg.data.pairs_from_run) / DB_NAME).is_file():
        with RunStore(cfg.data.pairs_from_run) as source:
            hashes["pairs"] = hash_json([(t.get("trace_id"), t.get("reward")) for t in source.trajectories()])
    version = getattr(grade, "__self__", None)
    hashes["grader"] = getattr(version, "version", None) or hash_json({"env_grader": env.name, "fn": getattr(grade, "__qualname__", "")})
    try:
        folder = resolve_model(cfg.model)
        cfg_file = Path(folder) / "config.json"
        hashes["base_model"] = hash_json({"name": cfg.model, "config": cfg_file.read_text() if cfg_file.exists() else ""})
    except AgentRFTError:
        hashes["base_model"] = hash_json({"name": cfg.model})
    return hashes


def _init_from(policy: Policy, run_dir: Path) -> None:
    """Start from another run's latest checkpoint (e.g. RFT after SFT)."""
    info = load_latest_checkpoint(run_dir)
    if info is None:
        raise ConfigError(f"init_from: {run_dir} has no checkpoint")
    restore_checkpoint(info, policy.model, None, None, restore_rng=False)
