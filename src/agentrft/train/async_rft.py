"""Asynchronous, off-policy RFT: the next step's rollouts are sampled while this step trains.

The synchronous step (:class:`~agentrft.train.rft.RFTMethod`) samples, then trains, and the inference
server idles while the trainer computes. Here a background *prefetcher* collects and grades the rollouts
of steps ``k+1 .. k+max_staleness`` while step ``k`` trains, from the server, which keeps serving the
adapter it has (version ``<= k-1``) until the runner pushes the update (:mod:`agentrft.train.weight_sync`).
Everything after the collection -- advantages, the loss, the optimizer -- is the synchronous step's own:
:class:`AsyncRFTMethod` only overrides where a step's rollouts come from (``_collect``).

Data order is the synchronous run's: step ``s``'s tasks and sampling seeds are the same pure functions of
(seed, step) (:func:`~agentrft.train.demonstrations.cycle_batches`, :meth:`JobConfig.step_rollout`); only
which policy version sampled them differs.

The staleness bound. The trainer's version at step ``s`` is ``t_s``, the updates applied before it; a
rollout records the version ``v`` that sampled it. The prefetcher starts step ``s``'s rollouts only once
the update of step ``s - 1 - max_staleness`` has been pushed (it is given leave at the start of step
``s - max_staleness``), so ``t_s - v <= max_staleness`` by construction; the check is made again per
rollout when the step trains, and a rollout past the bound is dropped (stop reason ``infra_error`` with a
``stale`` error, counted in ``async/dropped_stale``). ``max_staleness: 0`` collects each step when it
starts: on-policy, as the synchronous step. Per step: ``async/staleness_mean``, ``async/staleness_max``
(over the step's usable rollouts), ``async/trainer_version`` (``t_s``), ``async/wait_s`` (how long the
trainer waited for the step's rollouts) and ``policy_version`` (the oldest that sampled them).

Which version sampled a rollout: the version the weight sync had confirmed loaded on the server when the
rollout's first request was sent (read, per rollout, by its first turn's seed). A push that completes
while the rollout runs serves its later turns the newer adapter: a rollout can span versions, and the
record is then the oldest, so the staleness it gives is an upper bound.

The mismatch between the sampler and the trainer (an older adapter, another engine) is corrected by
truncated importance sampling in the loss (``rft.is_correction``, on by default here:
:func:`~agentrft.train.rft.resolved_is_correction`).

Resume: each prefetched step's rollouts, graded but not trained on, are written to
``RUN_DIR/pending/step-NNNNNN.json`` (atomically, by rename) as soon as they are graded. A resumed run
trains step ``s`` on that file's trajectories when it exists (same trace ids; nothing is sampled again)
and collects only the steps without one; which updates were applied is the checkpoint's (the runner
continues after its step), so no update is applied twice. A file is deleted once a checkpoint covers its
step. A collection still running when the run stopped is not kept: those rollouts are sampled again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from agentrft.config import JobConfig, RolloutConfig
from agentrft.jobs.checkpoint import checkpoint_steps
from agentrft.models.policy import Policy
from agentrft.rollout.collector import episode_seed
from agentrft.rollout.episode import turn_seed
from agentrft.rollout.sampler import Completion, Sampler, SamplingParams, TokenCallback
from agentrft.train.context import TrainContext
from agentrft.train.demonstrations import cycle_batches
from agentrft.train.rft import RFTMethod
from agentrft.train.weight_sync import WeightSync, policy_version
from agentrft.types import Grade, StopReason, TaskRow, Trajectory, TrajectoryError

PENDING_DIR = "pending"
"""Folder of the run directory that holds prefetched, untrained steps (one JSON file per step)."""


@dataclass
class Collected:
    """One step's rollouts, graded, as ``RFTMethod._collect`` returns them."""

    step: int
    rows: list[TaskRow]
    trajectories: list[Trajectory]
    grades: list[Grade]
    sampling_s: float
    grading_s: float
    seed: int | None
    """The step's rollout seed: a file written under another config is not this step's."""

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "rows": self.rows, "trajectories": [t.to_dict() for t in self.trajectories],
                "grades": [dataclasses.asdict(g) for g in self.grades], "sampling_s": self.sampling_s,
                "grading_s": self.grading_s, "seed": self.seed}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Collected":
        return cls(d["step"], d["rows"], [Trajectory.from_dict(t) for t in d["trajectories"]],
                   [Grade(**g) for g in d["grades"]], d["sampling_s"], d["grading_s"], d["seed"])


def pending_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / PENDING_DIR / f"step-{step:06d}.json"


def write_pending(run_dir: Path, collected: Collected) -> Path:
    """``collected`` in its step's file, complete before it gets its name."""
    path = pending_path(run_dir, collected.step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "w") as f:
        json.dump(collected.to_dict(), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_pending(run_dir: Path) -> dict[int, Collected]:
    """The prefetched steps stored in the run, by step."""
    folder = Path(run_dir) / PENDING_DIR
    out: dict[int, Collected] = {}
    for path in sorted(folder.glob("step-*.json")) if folder.is_dir() else []:
        collected = Collected.from_dict(json.loads(path.read_text()))
        out[collected.step] = collected
    return out


def prune_pending(run_dir: Path, through: int) -> None:
    """Delete the stored steps up to ``through`` (a checkpoint covers them)."""
    for step in [s for s in read_pending_steps(run_dir) if s <= through]:
        pending_path(run_dir, step).unlink(missing_ok=True)


def read_pending_steps(run_dir: Path) -> list[int]:
    folder = Path(run_dir) / PENDING_DIR
    return sorted(int(p.stem.split("-")[1]) for p in folder.glob("step-*.json")) if folder.is_dir() else []


class VersionStamps:
    """A :class:`Sampler` that notes, for each seed it is called with first, the policy version the weight
    sync had confirmed loaded on the server when that call was sent (:meth:`first_version`)."""

    def __init__(self, sampler: Sampler, sync: WeightSync) -> None:
        self.sampler, self.sync = sampler, sync
        self.max_context = sampler.max_context
        self._first: dict[int, int | None] = {}
        self._lock = threading.Lock()

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                 on_token: TokenCallback | None = None) -> list[Completion]:
        if params.seed is not None:
            with self._lock:
                self._first.setdefault(params.seed, self.sync.version)
        return self.sampler.generate(prompts, params, on_token)

    def release(self) -> None:
        self.sampler.release()

    def first_version(self, seed: int | None, default: int | None) -> int | None:
        """The version noted for ``seed``; ``default`` when no call used it (a rollout that never sampled)."""
        return self._first.get(seed, default) if seed is not None else default


def first_turn_seed(rcfg: RolloutConfig, index: int) -> int | None:
    """The seed of rollout ``index``'s first sampler call (task-major index): its own under ``per_episode``,
    the turn's shared one under ``lockstep`` (:mod:`agentrft.rollout.collector`)."""
    return episode_seed(rcfg, index, 1) if rcfg.mode == "per_episode" else turn_seed(rcfg, 1)


class WatchedSync:
    """The run's :class:`WeightSync`, unchanged, that also stops the prefetcher when the runner closes it
    (:func:`agentrft.train.weight_sync.stop_sampling`, before the sampler is closed): a stopped run's
    prefetcher stores nothing sampled after that."""

    def __init__(self, inner: WeightSync, on_close) -> None:
        self.inner, self.on_close = inner, on_close

    @property
    def version(self) -> int | None:
        return self.inner.version

    def push(self, policy: Policy, version: int) -> dict[str, float]:
        return self.inner.push(policy, version)

    def close(self) -> None:
        self.on_close()
        self.inner.close()


class Prefetcher:
    """A background thread that collects and grades steps in order, each once it has leave (:meth:`allow`),
    stores each in the run (:func:`write_pending`) and hands it to the step that trains on it (:meth:`take`)."""

    def __init__(self, method: "AsyncRFTMethod", ctx: TrainContext, first_step: int) -> None:
        self.method, self.ctx = method, ctx
        self._cond = threading.Condition()
        self._allowed = first_step - 1
        self._next = first_step
        self._stopped = False
        cfg = ctx.cfg
        self._ready: dict[int, Collected | BaseException] = {
            s: c for s, c in read_pending(ctx.run_dir).items()
            if s >= first_step and c.seed == cfg.step_rollout(s).seed
            and len(c.trajectories) == len(c.rows) * cfg.rft.group_size}
        self.loaded = sorted(self._ready)
        self._thread = threading.Thread(target=self._run, name="agentrft-prefetch", daemon=True)
        self._thread.start()

    def allow(self, through: int) -> None:
        """Steps up to ``through`` may be collected now."""
        with self._cond:
            self._allowed = max(self._allowed, through)
            self._cond.notify_all()

    def take(self, step: int) -> Collected:
        """Step ``step``'s rollouts, once collected; a failure of the collection is raised here."""
        with self._cond:
            self._cond.wait_for(lambda: step in self._ready or self._stopped)
            if step not in self._ready:
                raise RuntimeError(f"the prefetcher stopped before step {step} was collected")
            got = self._ready.pop(step)
        if isinstance(got, BaseException):
            raise got
        return got

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopped or self._next <= self._allowed)
                if self._stopped:
                    return
                step, self._next = self._next, self._next + 1
                if step in self._ready:  # stored by the run before a resume
                    continue
            try:
                got: Collected | BaseException = self.method.sample_step(self.ctx, step)
            except BaseException as e:  # raised in the trainer's thread by take()
                got = e
            with self._cond:  # under the lock: stop() either comes before (nothing stored) or after the write
                if self._stopped:
                    return
                if isinstance(got, Collected):
                    write_pending(self.ctx.run_dir, got)
                self._ready[step] = got
                self._cond.notify_all()


class AsyncRFTMethod(RFTMethod):
    """RFT whose rollouts are prefetched up to ``rft.max_staleness`` steps ahead (see the module docstring)."""

    def __init__(self) -> None:
        self.prefetcher: Prefetcher | None = None
        self._taken: set[int] = set()

    def step(self, ctx: TrainContext, batch: list[TaskRow], step: int) -> dict[str, float]:
        cfg = ctx.cfg
        if self.prefetcher is None:
            self.prefetcher = Prefetcher(self, ctx, step)
            ctx.weight_sync = WatchedSync(ctx.weight_sync, self.close)
        prune_pending(ctx.run_dir, max(checkpoint_steps(ctx.run_dir), default=0))
        # the updates of steps < step are pushed: steps up to step + max_staleness may start sampling
        self.prefetcher.allow(min(step + cfg.rft.max_staleness, ctx.total_steps))
        self._trainer_version = policy_version(ctx)
        self._step_stats: dict[str, float] = {}
        metrics = super().step(ctx, batch, step)
        metrics.update(self._step_stats)
        return metrics

    def close(self) -> None:
        """Stop prefetching; the stored steps a checkpoint covers are deleted, the others kept for a resume."""
        if self.prefetcher is not None:
            self.prefetcher.stop()
            prune_pending(self.prefetcher.ctx.run_dir, max(checkpoint_steps(self.prefetcher.ctx.run_dir), default=0))

    def _collect(self, ctx: TrainContext, rows: list[TaskRow], rcfg: RolloutConfig, step: int):
        """The step's own rollouts from the prefetcher, past-bound ones dropped; its further rounds
        (``rft.resample_rounds``) are sampled now, with the current weights."""
        if step in self._taken:
            return super()._collect(ctx, rows, rcfg, step)
        self._taken.add(step)
        t0 = time.perf_counter()
        got = self.prefetcher.take(step)
        if got.rows != json.loads(json.dumps(list(rows))) or got.seed != rcfg.seed:  # rows as stored
            raise RuntimeError(f"step {step}: the prefetched rollouts are of other tasks than the step's")
        self._step_stats = drop_stale(got.trajectories, self._trainer_version, ctx.cfg.rft.max_staleness)
        self._step_stats["async/wait_s"] = time.perf_counter() - t0
        return got.rows, got.trajectories, got.grades, got.sampling_s, got.grading_s

    def sample_step(self, ctx: TrainContext, step: int) -> Collected:
        """Collect and grade step ``step`` (in the prefetcher's thread), each rollout stamped with the version
        that sampled it."""
        cfg: JobConfig = ctx.cfg
        rows = cycle_batches(ctx.items, cfg.training.batch_size, step, cfg.seed)
        rcfg = cfg.step_rollout(step)
        stamps = VersionStamps(ctx.sampler, ctx.weight_sync)
        before = ctx.weight_sync.version
        rows, trajs, grades, sampling_s, grading_s = super()._collect(
            dataclasses.replace(ctx, sampler=stamps), rows, rcfg, step)
        for i, t in enumerate(trajs):
            t.policy_version = stamps.first_version(first_turn_seed(rcfg, i), before)
        return Collected(step, list(rows), trajs, grades, sampling_s, grading_s, rcfg.seed)


def drop_stale(trajs: list[Trajectory], trainer_version: int, max_staleness: int) -> dict[str, float]:
    """Drop (as infra failures with a ``stale`` error) the rollouts sampled more than ``max_staleness``
    versions before ``trainer_version``; the step's staleness metrics over the others that can be trained on."""
    dropped, staleness = 0, []
    for t in trajs:
        if t.is_infra_failure or t.policy_version is None:
            continue
        lag = trainer_version - t.policy_version
        if lag > max_staleness:
            t.errors.append(TrajectoryError("stale", f"sampled by policy version {t.policy_version}, trained at "
                                                     f"{trainer_version}: {lag} > rft.max_staleness {max_staleness}"))
            t.stop_reason = StopReason.INFRA_ERROR
            dropped += 1
        else:
            staleness.append(lag)
    versions = [t.policy_version for t in trajs if t.policy_version is not None]
    out = {"async/dropped_stale": float(dropped), "async/trainer_version": float(trainer_version),
           "async/staleness_mean": sum(staleness) / len(staleness) if staleness else 0.0,
           "async/staleness_max": float(max(staleness, default=0))}
    if versions:
        out["policy_version"] = float(min(versions))
    return out


__all__ = ["AsyncRFTMethod", "Collected", "Prefetcher", "VersionStamps", "drop_stale", "pending_path",
           "read_pending"]
