"""What a training run's steps share: the context, the loop's state, and the method protocol.

:class:`TrainContext` is built whole by :func:`agentrft.train.runner.setup`
before the first step; each method (:mod:`~agentrft.train.sft`,
:mod:`~agentrft.train.dpo`, :mod:`~agentrft.train.rft`) implements
:class:`TrainingMethod` over it. :class:`TrainerState` is what the loop itself
keeps, and what every checkpoint saves so that a resumed run continues with it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from agentrft.config import JobConfig
from agentrft.jobs.lock import RunDirectoryLock
from agentrft.jobs.store import RunStore
from agentrft.models.policy import Policy
from agentrft.rollout.sampler import Sampler
from agentrft.runtime import RayRollouts
from agentrft.tools.environment import EnvSpec
from agentrft.train.weight_sync import LocalWeightSync, WeightSync
from agentrft.types import Grade, TaskRow, Trajectory

GradeFn = Callable[[Trajectory, TaskRow], Grade]


@dataclass
class TrainContext:
    """Everything a method's step needs; built whole by :func:`agentrft.train.runner.setup` before the first step."""

    cfg: JobConfig
    policy: Policy
    env: EnvSpec
    grade: GradeFn
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sampler: Sampler
    store: RunStore
    items: list[Any] = field(default_factory=list)
    """What the steps draw their batches from: tasks (RFT), demonstrations (SFT) or pairs (DPO)."""
    eval_rows: list[TaskRow] = field(default_factory=list)
    total_steps: int = 0
    run_dir: Path = Path(".")
    lock: RunDirectoryLock | None = None
    """This process's hold on ``run_dir`` (:mod:`agentrft.jobs.lock`), released when the job ends."""
    weight_sync: WeightSync = field(default_factory=LocalWeightSync)
    """Gets the policy's weights to ``sampler`` and knows the version it samples (:mod:`agentrft.train.weight_sync`)."""
    rollout_workers: RayRollouts | None = None
    """``runtime.backend: ray``: the run's rollout workers, opened by the first step
    (:func:`agentrft.train.rollout_workers.ray_rollouts`) and closed when the run ends."""


@dataclass
class TrainerState:
    """The loop's own state; saved in every checkpoint, so a resumed run continues with it."""

    step: int = 0
    best_eval_reward: float | None = None
    bad_steps: int = 0
    """Non-finite steps in a row."""
    evals_since_best: int = 0
    updates: int = 0
    """Steps whose update had a learning signal and a finite gradient; 0 at the end: ``completed_no_signal``."""
    no_signal_steps: int = 0
    """Steps without a learning signal (:mod:`agentrft.train.no_signal`), in all."""
    no_signal_in_a_row: int = 0
    """Of those, the ones since the last step with a signal (``training.stop_after_no_signal_steps``)."""

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> "TrainerState":
        names = {f.name for f in dataclasses.fields(cls)}
        state = cls(**{k: v for k, v in saved.items() if k in names})
        if "updates" not in saved:  # a checkpoint from before the count: its steps are taken to have learned
            state.updates = state.step
        return state


class TrainingMethod(Protocol):
    def prepare(self, cfg: JobConfig, policy: Policy, env: EnvSpec, train_rows: list[TaskRow]) -> list[Any]:
        """Turn task rows into the items a step consumes (tasks, demonstrations, pairs)."""
        ...

    def step(self, ctx: TrainContext, batch: list[Any], step: int) -> dict[str, float]:
        """One optimizer step; returns metrics (must include ``loss`` and ``skipped``)."""
        ...
