"""Where rollouts run: Ray rollout workers (:mod:`~agentrft.runtime.ray_runtime`) and the loopback endpoint
that serves them the trainer's own policy (:mod:`~agentrft.runtime.loopback`). In process, rollouts need
nothing from here (:func:`agentrft.rollout.collector.collect_episodes`). ``ray`` is imported only when a
runtime is opened."""

from agentrft.runtime.loopback import LoopbackServer, SamplerEndpoint
from agentrft.runtime.ray_runtime import (RayRollouts, RayUnavailable, RolloutTask, RolloutWorker, RolloutWorkerLost,
                                          WorkerSpec, connect_ray)

__all__ = ["LoopbackServer", "RayRollouts", "RayUnavailable", "RolloutTask", "RolloutWorker", "RolloutWorkerLost",
           "SamplerEndpoint", "WorkerSpec", "connect_ray"]
