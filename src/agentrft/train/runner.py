"""The job runner: ``agentrft train CONFIG.yaml`` for SFT, DPO and RFT.

One loop for every method::

    ctx, state = setup(cfg)                   # everything a step needs, complete
    for step in state.step+1 .. total:        # data position == step (pure function)
        metrics = method.step(ctx, batch)      # collect → grade → advantages → loss → optimizer (RFT)
        record(metrics)                        # metrics, non-finite-step budget
        after_step(ctx, state)                 # eval, checkpoint, early stop

What makes it operable:

* every run has a directory and rows in an embedded SQLite store: resolved
  config, dataset/grader/base-model hashes, events, per-step metrics,
  sampled trajectories and checkpoints (:mod:`agentrft.jobs`);
* checkpoints are atomic and hold model, optimizer, scheduler, RNG states and
  the :class:`TrainerState`, so ``--resume`` continues exactly where the last
  one left off — the batch of a step is a pure function of (seed, step), and
  so is the sampling seed of a step (:meth:`JobConfig.step_rollout`);
* a non-finite loss or gradient skips the update (reported); ``max_bad_steps``
  in a row stop the run with the last checkpoint intact;
* a step without a learning signal is warned about and counted, and a run with none ends
  ``completed_no_signal`` (:mod:`agentrft.train.no_signal`);
* a live monitor's alert with ``monitors.action: stop`` ends the run ``stopped`` after its step, that step
  checkpointed (:mod:`agentrft.train.monitors`);
* ``--resume`` keeps the run's saved config: another one is refused unless ``allow_config_change``
  (:mod:`agentrft.train.run_directory`); a run that never wrote a checkpoint does not block a plain re-run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from agentrft.config import JobConfig, Method
from agentrft.errors import AgentRFTError, ConfigError
from agentrft.evaluation import EVAL_BATCH_SIZE, evaluate_rows, summarize
from agentrft.jobs.checkpoint import checkpoint_steps, load_latest_checkpoint, restore_checkpoint, save_checkpoint
from agentrft.jobs.lock import RunDirectoryLock
from agentrft.jobs.plot import plot_finished_run
from agentrft.jobs.recovery import open_store_for_resume
from agentrft.jobs.sinks import MetricSinks, check_sinks, open_sinks
from agentrft.jobs.store import DB_NAME, RunStore, hash_file, hash_json
from agentrft.models.policy import Policy, build_policy
from agentrft.rollout.hf_sampler import HFSampler
from agentrft.tools.environment import EnvSpec
from agentrft.tools.presentation import present_prompt
from agentrft.train.audit_hooks import record_train_ended, record_train_started
from agentrft.train.context import GradeFn, TrainContext, TrainerState, TrainingMethod
from agentrft.train.demonstrations import cycle_batches, steps_per_epoch
from agentrft.train.monitors import monitor_stop_message
from agentrft.train.no_signal import no_signal_reason, run_warning, stop_message
from agentrft.train.optim import build_optimizer
from agentrft.train.run_directory import (HOLDS_A_RUN, check_resume_config, describe, remove_store,
                                          set_aside_unfinished_run)
from agentrft.train.tasks import job_tasks
from agentrft.train.weight_sync import build_weight_sync, start_sampling, stop_sampling, sync_weights

class TrainingStopped(AgentRFTError):
    """The run stopped on purpose (too many bad steps, grader error budget, ...)."""


class RunInterrupted(BaseException):
    """SIGTERM or SIGINT arrived: the run stopped (status ``stopped``), its last checkpoint intact.

    A ``BaseException``, like ``KeyboardInterrupt``: the places that turn a failure into data on a trajectory
    (``except Exception`` around a sampler call, a tool, a grader) must not swallow it."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


@contextlib.contextmanager
def _stop_on_signals():
    """SIGTERM and SIGINT raise :class:`RunInterrupted` in the training loop (main thread only), so the run
    records why it ended instead of dying as ``running``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise RunInterrupted(signal.Signals(signum).name, signum)

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


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
    status: str = "completed"
    """How the run ended: ``completed``, or ``completed_no_signal`` when no step updated the weights."""
    no_signal_steps: int = 0
    warning: str | None = None
    """Steps without a learning signal, said for the end of the run (:func:`agentrft.train.no_signal.run_warning`)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def data_files(cfg: JobConfig) -> list[tuple[str, str]]:
    """``(path, kind)`` of each JSONL file the job reads, with the OpenAI format it must be in: ``task``
    (RFT and eval tasks), ``supervised`` (SFT demonstrations), ``preference`` (DPO pairs)."""
    d = cfg.data
    files = []
    if cfg.method == Method.SFT and d.demonstrations_source():
        files.append((d.demonstrations_source(), "supervised"))
    if cfg.method == Method.DPO and d.pairs_source():
        files.append((d.pairs_source(), "preference"))
    if d.train_file and d.train_file not in dict(files):
        files.append((d.train_file, "task"))
    if d.eval_file:
        files.append((d.eval_file, "task"))
    return list(dict(files).items())


def check_data_files(cfg: JobConfig) -> dict[str, list]:
    """Validate every JSONL file the job reads (:func:`data_files`), each against its OpenAI format.
    Any invalid row stops the job with all of them listed, unless
    ``data.skip_invalid_rows``; then returns ``{file: [RowError, ...]}`` of the rows that will be skipped."""
    from agentrft.datasets import MAX_ERRORS_LISTED, load_jsonl_dataset

    found: dict[str, list] = {}
    for path, kind in data_files(cfg):
        errors = load_jsonl_dataset(path, kind=kind).errors  # a file with no valid row at all raises here
        if errors:
            found[path] = errors
    if found and not cfg.data.skip_invalid_rows:
        lines = [f"  {e}" for errors in found.values() for e in errors]
        more = len(lines) - MAX_ERRORS_LISTED
        raise ConfigError("\n".join([f"{sum(map(len, found.values()))} invalid row(s) in "
                                      f"{', '.join(found)}; fix them, or set data.skip_invalid_rows: true to "
                                      "train on the valid rows:", *lines[:MAX_ERRORS_LISTED]]
                                     + ([f"  ... and {more} more"] if more > 0 else [])))
    return found


def eval_policy(ctx: TrainContext, step: int) -> dict:
    """Roll out and grade the validation rows with :meth:`JobConfig.eval_rollout`; store their trajectories in
    run.db (``split='validation'``)."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    with tqdm(total=len(ctx.eval_rows), desc=f"eval at step {step}", unit="rollout", leave=False) as bar:
        graded = evaluate_rows(ctx.eval_rows, ctx.env, ctx.sampler, ctx.policy.chat_format, ctx.cfg.eval_rollout(),
                               samples=1, batch_size=EVAL_BATCH_SIZE, grade=ctx.grade, progress=bar.update)
    summary = summarize(graded, time.perf_counter() - t0)
    for g in graded:
        g.trajectory.policy_version = ctx.weight_sync.version
    ctx.store.log_trajectories(step, [{**g.trajectory.to_dict(), "grade": g.grade.to_dict(), "reward": g.grade.reward}
                                      for g in graded], split="validation")
    return summary


def _runtime(cfg: JobConfig) -> dict[str, Any]:
    """What this process computes with: recorded as an event each time a run starts or resumes."""
    from agentrft import allocator, machine
    from agentrft.models.onednn import auto_choice

    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "allocator": allocator.active(),
            "cpu": machine.cpu_model(), "cpu_matmul": cfg.training.cpu_matmul, "cpu_matmul_check": auto_choice()[1]}


def _pin_cpu_matmul(cfg: JobConfig, store: RunStore) -> JobConfig:
    """``training.cpu_matmul: auto`` resolved once per run: the choice the run started with when it resumes,
    else what ``auto`` picks on this machine now. ``auto`` times both libraries at start, and on a busy
    machine the faster one can differ between two processes; a resumed run (or a reload of its weights)
    that computed with the other library would no longer be bit-identical to the uninterrupted run. The
    pinned value is saved in the run's resolved config."""
    if cfg.training.cpu_matmul != "auto":
        return cfg
    from agentrft.models.onednn import auto_choice

    run = store.get_run()
    started = ((run or {}).get("resolved_config") or {}).get("training", {}).get("cpu_matmul")
    cfg = cfg.model_copy(deep=True)
    cfg.training.cpu_matmul = started if started in ("onednn", "mkl") else auto_choice()[0]
    return cfg


def _check_reward_source(cfg: JobConfig, grade: GradeFn | None) -> None:
    """A job on data files without ``data.env`` has no grader of ours: RFT and its evals need the user's."""
    d = cfg.data
    needs_reward = cfg.method == Method.RFT or (cfg.training.eval_samples > 0 and d.eval_file)
    if d.env_name() is None and needs_reward and grade is None and cfg.grader is None:
        raise ConfigError("a job on your data files without data.env grades with your grader: set 'grader' (an "
                          "OpenAI grader spec), or name a built-in environment in data.env to use its grader")


def setup(cfg: JobConfig, *, resume: bool = False, model=None, tokenizer=None, grade: GradeFn | None = None,
          log: Callable[[str], None] = print, rebuild_store: bool = False,
          allow_config_change: bool = False) -> tuple[TrainContext, TrainerState]:
    """Build the run: its directory and store, the policy, the data, the optimizer and, with ``resume``, the
    state of the latest valid checkpoint. Returns a complete context and the state to continue from.

    A resume checks the store first (:mod:`agentrft.jobs.recovery`): a damaged ``run.db`` stops it, naming
    the file, unless ``rebuild_store``; then the config (:mod:`agentrft.train.run_directory`): one that
    differs from the run's saved config stops it, listing the differences, unless ``allow_config_change``.
    A plain start in the directory of a run that never wrote a checkpoint replaces that run; a start that
    fails before its first step removes the store it made."""
    run_dir = Path(cfg.out_dir or f"runs/{cfg.method.value}-{time.strftime('%Y%m%d-%H%M%S')}")
    if rebuild_store and not resume:
        raise ConfigError("--rebuild-store recovers a run's damaged store to resume it; it needs --resume")
    if allow_config_change and not resume:
        raise ConfigError("--allow-config-change lets a resumed run take a changed config; it needs --resume")
    if (run_dir / DB_NAME).exists() and not resume and checkpoint_steps(run_dir):
        raise ConfigError(HOLDS_A_RUN.format(run_dir=run_dir))
    _check_reward_source(cfg, grade)  # before the run directory exists: a refused job leaves nothing behind
    check_sinks(cfg.sinks)
    invalid = check_data_files(cfg)
    lock = RunDirectoryLock(run_dir).acquire()  # released by run_job; a second job here is refused
    try:
        if (run_dir / DB_NAME).exists() and not resume:  # again, now that no other job can be creating it
            set_aside_unfinished_run(run_dir, log)
        if resume:
            store, rebuilt = open_store_for_resume(run_dir, rebuild=rebuild_store)
        else:
            store, rebuilt = RunStore(run_dir), None
        store.privacy = cfg.privacy  # everything the run writes passes through it (docs/privacy.md)
        try:
            return _setup_locked(cfg, run_dir, lock, store, invalid, resume=resume, model=model, tokenizer=tokenizer,
                                 grade=grade, log=log, rebuilt=rebuilt, allow_config_change=allow_config_change)
        except BaseException:
            store.close()
            if not resume:  # a start that failed before its first step leaves nothing to resume: no store
                remove_store(run_dir)
            raise
    except BaseException:
        lock.release()
        raise


def _setup_locked(cfg: JobConfig, run_dir: Path, lock: RunDirectoryLock, store: RunStore, invalid: dict[str, list],
                  *, resume: bool, model, tokenizer, grade: GradeFn | None, log: Callable[[str], None],
                  rebuilt: str | None, allow_config_change: bool) -> tuple[TrainContext, TrainerState]:
    cfg = _pin_cpu_matmul(cfg, store)
    run = store.get_run()
    changes = (check_resume_config(run_dir, run["resolved_config"], cfg, allow_change=allow_config_change,
                                   written=store.written)
               if resume and run is not None else {})  # refused before anything is written
    if rebuilt:
        log(f"resume: {rebuilt}")
    for path, errors in invalid.items():
        for err in errors:
            log(f"skipped {err}")
        store.log_event("invalid_rows", f"{path}: {len(errors)} invalid row(s) skipped (data.skip_invalid_rows)",
                        {"file": path, "count": len(errors), "rows": [str(e) for e in errors]})
    seed_everything(cfg.seed)

    env, train_rows, eval_rows, reward = job_tasks(cfg, grade)
    env, (train_rows, eval_rows) = present_prompt(cfg.prompt, env, train_rows, eval_rows)
    policy = build_policy(cfg, model, tokenizer)
    if cfg.init_from:
        _init_from(policy, Path(cfg.init_from))

    items = _methods()[cfg.method].prepare(cfg, policy, env, train_rows)
    total = cfg.training.max_steps or steps_per_epoch(len(items), cfg.training.batch_size) * cfg.training.n_epochs
    optimizer, scheduler = build_optimizer(cfg, policy, total)
    sampler = (HFSampler(policy.model, pad_token_id=policy.pad_token_id, cpu_matmul=cfg.training.cpu_matmul)
               if cfg.sampler.backend == "local" else None)  # a remote one connects once the weights are pushed
    ctx = TrainContext(cfg, policy, env, reward, optimizer, scheduler, sampler, store, items, eval_rows, total, run_dir,
                       lock, build_weight_sync(cfg, run_dir))

    state = TrainerState()
    if resume:
        info = load_latest_checkpoint(run_dir)
        if info is None:
            store.discard_after(0)  # every step is run again
            store.log_event("resume", "no checkpoint found; starting from step 0")
            log("resume: no checkpoint yet, starting from step 0")
        else:
            state = TrainerState.from_checkpoint(restore_checkpoint(info, policy.model, optimizer, scheduler))
            store.discard_after(state.step)  # rows of steps after the checkpoint are replayed
            store.log_event("resume", f"resumed from step {state.step}", {"path": str(info.path)}, step=state.step)
            log(f"resume: continuing after step {state.step} from {info.path}")
    if store.get_run() is None:
        store.create_run(run_id=run_dir.name, method=cfg.method.value, resolved_config=cfg.model_dump(mode="json"),
                         hashes=_hashes(cfg, env, train_rows, reward), created_at=time.time())
    if rebuilt:
        store.log_event("store_rebuilt", rebuilt, step=state.step)
    if changes:
        lines = describe(changes)
        log("\n".join(["resume: continuing with a changed config (--allow-config-change):", *lines]))
        store.log_event("config_change", "\n".join(["resumed with a changed config:", *lines]),
                        {"changes": {k: [old, new] for k, (old, new) in changes.items()}}, step=state.step)
        store.update_config(cfg.model_dump(mode="json"))
    start_sampling(ctx)  # the weights the run starts from (a resume's restored ones) reach the sampler first
    store.set_status("running")
    rt = _runtime(cfg)
    store.log_event("runtime", f"torch {rt['torch']}, {rt['threads']} threads, {rt['allocator']} allocator, "
                               f"{rt['cpu_matmul']} matmul", rt, step=state.step)
    return ctx, state


def run_job(cfg: JobConfig, *, resume: bool = False, model=None, tokenizer=None,
            grade: GradeFn | None = None, log: Callable[[str], None] = print, rebuild_store: bool = False,
            allow_config_change: bool = False) -> RunResult:
    """Run a training job to completion (or early stop); returns where it lives and its final eval.

    ``grade`` (a ``(trajectory, row) -> Grade`` function) overrides the reward
    for Python callers; from YAML, use the ``grader`` spec. ``rebuild_store`` (with ``resume``) recovers a
    damaged ``run.db`` from the checkpoints (:mod:`agentrft.jobs.recovery`). ``allow_config_change`` (with
    ``resume``) continues with a config that differs from the run's saved one, recording the change.
    """
    ctx, state = setup(cfg, resume=resume, model=model, tokenizer=tokenizer, grade=grade, log=log,
                       rebuild_store=rebuild_store, allow_config_change=allow_config_change)
    record_train_started(ctx, resume=resume, log=log)  # the audit log: :mod:`agentrft.train.audit_hooks`
    sinks = None
    try:
        sinks = open_sinks(ctx.cfg, ctx.run_dir, ctx.store, state.step)  # TensorBoard, W&B: never fail the run
        with _stop_on_signals():
            last_eval, stopped_early, status = _train(ctx, state, log, sinks)
    finally:
        if sinks is not None:
            sinks.close()
        if ctx.rollout_workers is not None:  # the Ray rollout workers of runtime.backend: ray
            ctx.rollout_workers.close()
        stop_sampling(ctx)
        record_train_ended(ctx, log)  # never fails the run
        ctx.lock.release()
        plot_finished_run(ctx.run_dir, log)  # RUN_DIR/metrics.png; never fails the run
    warning = run_warning(ctx.cfg.method, state.step, state.no_signal_steps, state.updates)
    if status == "stopped":  # a live monitor's stop: its message, as the store holds it
        warning = (ctx.store.get_run() or {}).get("message") or warning
    return RunResult(ctx.run_dir, state.step, last_eval, state.best_eval_reward, stopped_early, ctx.policy, status,
                     state.no_signal_steps, warning)


def _train(ctx: TrainContext, state: TrainerState, log: Callable[[str], None],
           sinks: MetricSinks) -> tuple[dict, bool, str]:
    """The loop from ``state`` to the last step; records how the run ended. Returns (final eval, stopped early,
    final status)."""
    from tqdm import tqdm

    cfg = ctx.cfg
    from agentrft.train.async_rft import AsyncRFTMethod  # rft.asynchronous: the next step samples while this trains
    method = AsyncRFTMethod() if cfg.rft.asynchronous else _methods()[cfg.method]
    last_eval: dict | None = None
    stopped_early, stop = False, None
    bar = tqdm(total=ctx.total_steps, initial=state.step, desc=f"{cfg.method.value}", unit="step", leave=False)

    def say(line: str) -> None:  # lines between the bars, never through them
        with tqdm.external_write_mode():
            log(line)

    try:
        while state.step < ctx.total_steps:
            step = state.step + 1
            batch = cycle_batches(ctx.items, cfg.training.batch_size, step, cfg.seed)
            t0 = time.perf_counter()
            metrics = method.step(ctx, batch, step)
            metrics.update(sync_weights(ctx))  # the sampler samples the updated weights from here on
            metrics.update(ctx.rollout_workers.take_metrics() if ctx.rollout_workers else {})  # runtime/...
            metrics["step_time_s"] = time.perf_counter() - t0
            metrics["lr"] = ctx.scheduler.get_last_lr()[0]
            no_signal = no_signal_reason(cfg.method, batch, metrics)
            _record_step(ctx, state, step, metrics, no_signal, sinks)
            stop = monitor_stop_message(ctx, step, metrics)  # monitors.action: stop: this step is the last
            evaluated = _eval_and_checkpoint(ctx, state, sinks, last=stop is not None)
            last_eval = evaluated or last_eval
            say(_one_line(step, ctx.total_steps, metrics, evaluated))
            if no_signal:
                say(f"warning: step {step} had no learning signal: {no_signal}")
            bar.update(1)
            if stop or _plateaued(ctx, state):
                stopped_early = True
                break
        if last_eval is None:
            last_eval = eval_policy(ctx, state.step) if ctx.eval_rows else {}
    except RunInterrupted as e:
        latest = load_latest_checkpoint(ctx.run_dir, verify_hashes=False)
        kept = f"the checkpoint of step {latest.step} is intact" if latest else "no checkpoint was written yet"
        message = f"stopped by {e} during step {state.step + 1}; {kept}: continue with --resume"
        ctx.store.set_status("stopped", message)
        raise RunInterrupted(message, e.signum) from None
    except AgentRFTError as e:  # stopped on purpose: bad steps, grader error budget, ...
        ctx.store.set_status("failed", str(e))
        raise
    except BaseException as e:
        ctx.store.set_status("failed", f"{type(e).__name__}: {e}")
        raise
    finally:
        bar.close()
    status = "stopped" if stop else "completed" if state.updates or not state.step else "completed_no_signal"
    ctx.store.set_status(status, stop or (None if status == "completed" else
                                          run_warning(cfg.method, state.step, state.no_signal_steps, state.updates)))
    return last_eval, stopped_early, status


def _record_step(ctx: TrainContext, state: TrainerState, step: int, metrics: dict[str, Any],
                 no_signal: str | None, sinks: MetricSinks) -> None:
    """Store the step's metrics (and copy them to the metric sinks) and advance the state; stop after ``max_bad_steps`` non-finite steps in a row,
    or ``stop_after_no_signal_steps`` steps without a learning signal in a row."""
    if no_signal:
        state.no_signal_steps += 1
        state.no_signal_in_a_row += 1
    else:
        state.no_signal_in_a_row = 0
        state.updates += 0 if metrics.get("skipped") else 1
    metrics.update(no_signal=float(no_signal is not None), no_signal_steps=float(state.no_signal_steps))
    ctx.store.log_metrics(step, metrics, split="train")
    sinks.write(step, metrics, split="train")
    if no_signal:
        ctx.store.log_event("no_signal", f"step {step}: no learning signal: {no_signal}", step=step)
    limit = ctx.cfg.training.stop_after_no_signal_steps
    if limit and state.no_signal_in_a_row >= limit:
        raise TrainingStopped(stop_message(ctx.cfg.method, state.no_signal_in_a_row, step, no_signal))
    if metrics.get("skipped"):
        state.bad_steps += 1
        ctx.store.log_event("nonfinite_skip", f"step {step}: non-finite loss or gradient; update skipped", step=step)
        if state.bad_steps >= ctx.cfg.training.max_bad_steps:
            raise TrainingStopped(
                f"{state.bad_steps} steps in a row had a non-finite loss or gradient; stopping "
                f"(the last checkpoint in {ctx.run_dir / 'checkpoints'} is intact)")
    else:
        state.bad_steps = 0
    state.step = step


def _eval_and_checkpoint(ctx: TrainContext, state: TrainerState, sinks: MetricSinks,
                         last: bool = False) -> dict | None:
    """Every ``eval_interval`` steps and at the last (or ``last``: the live monitors stop the run here): eval on
    the validation rows and track the best reward; on those steps, every ``checkpoint_interval`` steps and at the
    last: write a checkpoint. Returns the eval summary when one ran."""
    t, step, last = ctx.cfg.training, state.step, last or state.step == ctx.total_steps
    summary, metric = None, None
    if ctx.eval_rows and (step % t.eval_interval == 0 or last):
        summary = eval_policy(ctx, step)
        metric = summary["reward_mean"]
        ctx.store.log_metrics(step, _numeric(summary), split="validation")
        sinks.write(step, _numeric(summary), split="validation")
        if state.best_eval_reward is None or metric > state.best_eval_reward + t.early_stop_min_delta:
            state.best_eval_reward, state.evals_since_best = metric, 0
        else:
            state.evals_since_best += 1
    if summary is not None or step % t.checkpoint_interval == 0 or last:
        path = save_checkpoint(ctx.run_dir, step, ctx.policy.model, ctx.optimizer, ctx.scheduler,
                               trainer_state=dataclasses.asdict(state), metric=metric, keep_best_k=t.keep_best_k)
        ctx.store.record_checkpoint(step, str(path), metric,
                                    is_best=metric is not None and metric == state.best_eval_reward)
    return summary


def _plateaued(ctx: TrainContext, state: TrainerState) -> bool:
    """Early stop: the validation reward has not improved for ``early_stop_patience`` evals (event logged)."""
    patience = ctx.cfg.training.early_stop_patience
    if patience and state.evals_since_best >= patience:
        ctx.store.log_event("early_stop", f"validation reward plateaued for {patience} evals", step=state.step)
        return True
    return False


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


def _hashes(cfg: JobConfig, env: EnvSpec, rows: list[dict], grade: GradeFn) -> dict[str, str]:
    from agentrft.graders.base import Grader
    from agentrft.models.loading import resolve_model

    hashes = {"dataset": hash_json(rows), "config": hash_json(cfg.model_dump(mode="json"))}
    # what SFT/DPO actually train on when it is not generated from the task rows
    for key, path in (("demonstrations", cfg.data.demonstrations_source() if cfg.method == Method.SFT else None),
                      ("pairs", cfg.data.pairs_source() if cfg.method == Method.DPO else None)):
        if path and Path(path).is_file():
            hashes[key] = hash_file(path)
    if cfg.data.pairs_from_run and (Path(cfg.data.pairs_from_run) / DB_NAME).is_file():
        with RunStore(cfg.data.pairs_from_run) as source:
            hashes["pairs"] = hash_json([(t.get("trace_id"), t.get("reward")) for t in source.trajectories()])
    grader = getattr(grade, "__self__", None)  # a bound Grader.grade: its spec's content hash
    hashes["grader"] = grader.version if isinstance(grader, Grader) else hash_json(
        {"env_grader": env.name, "fn": getattr(grade, "__qualname__", "")})
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
