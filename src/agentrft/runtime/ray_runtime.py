"""Rollout workers as Ray actors: environments, tool calls and grading, spread over a Ray cluster.

``runtime: {backend: ray, rollout_workers: N}`` runs a step's rollouts on N
:class:`RolloutWorker` actors instead of in the trainer's process. The trainer
keeps the policy, the loss and the optimizer; each worker holds what a
rollout needs besides the weights: the environment factory and the grader
(rebuilt in the worker from the job config by ``build_tasks``), the chat
format (its tokenizer, no model) and an
:class:`~agentrft.rollout.openai_compat_sampler.OpenAICompatSampler` pointed at
the run's completions server: the configured one (``sampler.backend:
openai_compat|vllm``) or the trainer's own policy served on a loopback port
(:mod:`agentrft.runtime.loopback`, ``sampler.backend: local``).

One task is one rollout: ``(row, sample index k, episode index)``. A worker
plays it with the episode loop's own turns and the per-episode collector's
seeds (:func:`~agentrft.rollout.collector.play_episode`), grades it, and
returns ``(trajectory dict, grade dict)``. Each turn is its own request with
its own seed, so a rollout draws the same tokens on any worker, however the
others are timed: a Ray step equals the in-process ``rollout.mode:
per_episode`` step against the same server (tests/test_ray_runtime.py).

Dispatch: :meth:`RayRollouts.collect` keeps at most ``concurrency`` tasks in
flight per worker (a threaded actor runs them at once) and hands the next
task to the least loaded worker. A worker that dies (``RayActorError``:
killed, its node lost, out of memory) fails every task it held; each is
dispatched again, first in line, up to ``runtime.max_task_retries`` times, and
the dead worker is replaced by a fresh actor. Results are keyed by task
index, so a rollout is never lost or counted twice, and they come back in
task-major order, as :func:`~agentrft.rollout.collector.collect_episodes`
returns them. A task that raises (a bug, not a bad rollout: those are data on
the trajectory) fails the step.

Ray itself: ``ray.init(address=runtime.address or $RAY_ADDRESS)``, a local
cluster when neither is set; a process already connected keeps its
connection (tests share one cluster). ``ray`` is imported only here and only
when a runtime is opened.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from agentrft.config import RolloutConfig
from agentrft.config_sections import RuntimeConfig
from agentrft.errors import AgentRFTError
from agentrft.evaluation import grade_safely
from agentrft.models.chat_format import ChatFormat
from agentrft.rollout.collector import play_episode
from agentrft.rollout.openai_compat_sampler import OpenAICompatSampler
from agentrft.rollout.sampler import Sampler
from agentrft.runtime.loopback import LoopbackServer, SamplerEndpoint
from agentrft.tools.environment import Environment
from agentrft.types import Grade, TaskRow, Trajectory

__all__ = ["RayRollouts", "RayUnavailable", "RolloutTask", "RolloutWorker", "RolloutWorkerLost", "WorkerSpec",
           "connect_ray"]

MakeEnv = Callable[[TaskRow], Environment | None]
GradeFn = Callable[[Trajectory, TaskRow], Grade]


class RayUnavailable(AgentRFTError):
    """The Ray cluster named by ``runtime.address`` or ``RAY_ADDRESS`` cannot be reached, or ray is missing."""


class RolloutWorkerLost(AgentRFTError):
    """A rollout's workers died more than ``runtime.max_task_retries`` times: the step cannot complete."""


@dataclass(frozen=True)
class RolloutTask:
    """One rollout: sample ``sample`` of ``row``; ``episode`` (its task-major index in the step) seeds its turns."""

    row: TaskRow
    sample: int
    episode: int


@dataclass(frozen=True)
class WorkerSpec:
    """What a rollout worker is built from (pickled once into Ray's object store)."""

    build_tasks: Callable[[], tuple[MakeEnv, GradeFn]]
    """Called in the worker: the per-rollout environment factory and the reward (a module-level function or a
    ``functools.partial`` of one, so it pickles by reference)."""
    chat_format: ChatFormat
    sampler: SamplerEndpoint


class RolloutWorker:
    """A Ray actor (threaded: it plays ``concurrency`` rollouts at once): roll out, grade, return dicts."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.make_env, self.grade = spec.build_tasks()
        self.chat_format = spec.chat_format
        s = spec.sampler
        self.sampler = OpenAICompatSampler(s.url, s.model, max_context=s.max_context, api_key=s.api_key,
                                           timeout_s=s.timeout_s)

    def pid(self) -> int:
        return os.getpid()

    def rollout(self, task: RolloutTask, config: RolloutConfig) -> tuple[dict[str, Any], dict[str, Any]]:
        """Play and grade one rollout: the per-episode collector's turns and seeds, on this worker."""
        traj = play_episode(task.row, task.sample, task.episode, self.make_env, self.sampler, self.chat_format,
                            config)
        grade = grade_safely(self.grade, traj, task.row)
        return traj.to_dict(), dataclasses.asdict(grade)


def connect_ray(runtime: RuntimeConfig) -> bool:
    """Connect this process to Ray: ``runtime.address``, else ``$RAY_ADDRESS``, else a new local cluster (sized
    for the workers, no dashboard). Returns whether this call started the connection (then the caller shuts it
    down). An address that does not answer is a :class:`RayUnavailable` naming it, within seconds."""
    try:
        import ray
    except ImportError:
        raise RayUnavailable("runtime.backend: ray needs the ray package: pip install 'agentrft[ray]'") from None
    address = runtime.address or os.environ.get("RAY_ADDRESS") or None
    source = "runtime.address" if runtime.address else "RAY_ADDRESS"
    if address:
        _check_reachable(address, source)
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=True,
                                  logging_level="warning")
    if not address:
        kwargs["num_cpus"] = max(1, int(-(-runtime.rollout_workers * runtime.worker_cpus // 1)))
    try:
        ray.init(address=address, **kwargs)
    except Exception as e:  # ray raises ConnectionError, RuntimeError, ... depending on how it failed
        where = f"the Ray cluster at {address!r} ({source})" if address else "a local Ray cluster"
        raise RayUnavailable(f"cannot connect to {where}: {type(e).__name__}: {e}") from None
    return True


def _check_reachable(address: str, source: str, timeout_s: float = 5.0) -> None:
    """A ``host:port`` or ``ray://host:port`` address must accept a TCP connection (ray itself retries for a
    minute before it gives up). ``auto`` and ``local`` are ray's to resolve."""
    hostport = address.removeprefix("ray://")
    if address in ("auto", "local") or ":" not in hostport:
        return
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return
    except (OSError, ValueError) as e:
        raise RayUnavailable(f"cannot reach the Ray cluster at {address!r} ({source}): {type(e).__name__}: {e}. "
                             "Start it (ray start --head), fix the address, or unset it for a local cluster") from None


class RayRollouts:
    """The driver: ``rollout_workers`` actors, a task queue, re-dispatch of a dead worker's tasks."""

    def __init__(self, spec: WorkerSpec | Callable[[SamplerEndpoint], WorkerSpec], runtime: RuntimeConfig, *,
                 concurrency: int = 8, serve: Sampler | None = None) -> None:
        """``spec``, or with ``serve`` (the trainer's own sampler, served on a loopback port once Ray is up) a
        function of that port's endpoint returning it. ``concurrency``: rollouts in flight per worker."""
        import ray

        started = time.perf_counter()
        self.runtime = runtime
        self.concurrency = concurrency
        self.workers: list[Any] = []
        self._starting: dict[Any, Any] = {}  # a replacement's first call -> the replacement, until it answers
        self.loopback: LoopbackServer | None = None
        self.stats = {"runtime/redispatched": 0.0, "runtime/worker_restarts": 0.0}
        """Counts since the last :meth:`take_metrics`: tasks dispatched again, dead workers replaced (and, once,
        ``runtime/startup_s``: connecting to Ray and starting the workers)."""
        self._owns_ray = connect_ray(runtime)
        try:
            if serve is not None:
                local = self._owns_ray or not (runtime.address or os.environ.get("RAY_ADDRESS"))
                host = "127.0.0.1" if local else ray.util.get_node_ip_address()
                self.loopback = LoopbackServer(serve, host=host).start()
                spec = spec(self.loopback.endpoint)
            self._spec = ray.put(spec)
            self._actor = ray.remote(RolloutWorker).options(num_cpus=runtime.worker_cpus, max_concurrency=concurrency,
                                                            max_restarts=0)
            self.workers = [self._actor.remote(self._spec) for _ in range(runtime.rollout_workers)]
            ray.get([w.pid.remote() for w in self.workers])  # a worker that cannot be built fails the run here
        except BaseException:
            self.close()
            raise
        self.stats["runtime/startup_s"] = time.perf_counter() - started

    def collect(self, rows: list[TaskRow], config: RolloutConfig,
                samples_per_task: int = 1) -> tuple[list[Trajectory], list[Grade]]:
        """Roll out and grade every row ``samples_per_task`` times on the workers; task-major order."""
        import ray
        from ray.exceptions import RayActorError

        tasks = [RolloutTask(row, k, i * samples_per_task + k)
                 for i, row in enumerate(rows) for k in range(samples_per_task)]
        waiting = deque(range(len(tasks)))
        tries = [0] * len(tasks)
        results: dict[int, tuple[dict, dict]] = {}
        in_flight: dict[Any, tuple[int, Any]] = {}  # object ref -> (task index, the worker that holds it)
        load = {id(w): 0 for w in self.workers}
        while waiting or in_flight:
            started = [w for w in self.workers if w not in self._starting.values()]
            while waiting and started:  # a replacement takes rollouts once it runs: the others go on meanwhile
                worker = min(started, key=lambda w: load[id(w)])
                if load[id(worker)] >= self.concurrency:
                    break
                i = waiting.popleft()
                in_flight[worker.rollout.remote(tasks[i], config)] = (i, worker)
                load[id(worker)] += 1
            done, _ = ray.wait([*in_flight, *self._starting], num_returns=1)
            for ref in done:
                if ref in self._starting:
                    self._started(ref)
                    continue
                i, worker = in_flight.pop(ref)
                load[id(worker)] = load.get(id(worker), 1) - 1
                try:
                    result = ray.get(ref)
                except RayActorError as e:
                    self._replace(worker, load)
                    if tries[i] >= self.runtime.max_task_retries:
                        raise RolloutWorkerLost(
                            f"rollout {i} (task {tasks[i].row.get('id', '?')!r}, sample {tasks[i].sample}) lost its "
                            f"worker {tries[i] + 1} times (runtime.max_task_retries: {self.runtime.max_task_retries})"
                            f": {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
                    tries[i] += 1
                    self.stats["runtime/redispatched"] += 1
                    waiting.appendleft(i)
                    continue
                results.setdefault(i, result)  # one dispatch in flight per task: a second result cannot come
        if self.loopback is not None:  # a killed worker's request may still be decoding: never during training
            self.loopback.wait_idle()
        out = [results[i] for i in range(len(tasks))]
        return [Trajectory.from_dict(t) for t, _ in out], [Grade(**g) for _, g in out]

    def _replace(self, dead: Any, load: dict[int, int]) -> None:
        """Swap a dead worker for a fresh actor (once, however many of its tasks report the death)."""
        if dead not in self.workers:
            return
        fresh = self._actor.remote(self._spec)
        self.workers[self.workers.index(dead)] = fresh
        self._starting[fresh.pid.remote()] = fresh
        load[id(fresh)] = 0
        self.stats["runtime/worker_restarts"] += 1

    def _started(self, ref: Any) -> None:
        """A replacement answered its first call; one that could not start fails the step (it would again)."""
        import ray
        from ray.exceptions import RayActorError

        self._starting.pop(ref)
        try:
            ray.get(ref)
        except RayActorError as e:
            raise RolloutWorkerLost(f"a replacement rollout worker could not start: {type(e).__name__}: "
                                    f"{str(e).splitlines()[0] if str(e) else ''}") from None

    def take_metrics(self) -> dict[str, float]:
        """The counts since the last call (a step's), reset."""
        out = {**self.stats, "runtime/rollout_workers": float(len(self.workers))}
        self.stats = {"runtime/redispatched": 0.0, "runtime/worker_restarts": 0.0}
        return out

    def close(self) -> None:
        """Stop the workers, the loopback server and, if this runtime started it, the Ray connection."""
        import ray

        for w in self.workers:
            ray.kill(w)
        self.workers, self._starting = [], {}
        if self.loopback is not None:
            self.loopback.close()
            self.loopback = None
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False

