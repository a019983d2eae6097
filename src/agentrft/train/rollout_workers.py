"""A training run's Ray rollout workers (``runtime.backend: ray``): opened on first use, closed with the run.

:func:`ray_rollouts` builds the :class:`~agentrft.runtime.RayRollouts` of a
:class:`~agentrft.train.context.TrainContext` once and keeps it on the
context; the runner closes it when the run ends. What each worker is built
from:

* the environment and reward, rebuilt in the worker from the job's resolved config by :func:`worker_tasks`
  (:func:`~agentrft.train.tasks.job_tasks`, as the trainer built them: a built-in environment, or a data
  file's rows with their ``tools`` servers; a grader spec is loaded in the worker, its sandbox pool
  included). A reward function given from Python (``run_job(grade=...)``) is pickled to the workers, so it
  must be importable or picklable there;
* the policy's chat format (its tokenizer, no weights);
* the sampler: the configured server (``sampler.backend: openai_compat|vllm``, the one the trainer pushes its
  adapter to), or the trainer's own policy served on a loopback port (``sampler.backend: local``,
  :mod:`agentrft.runtime.loopback`), sampled from as it trains with nothing to push.
"""

from __future__ import annotations

import functools
from typing import Any

from agentrft.config import JobConfig
from agentrft.rollout.openai_compat_sampler import api_key
from agentrft.runtime import RayRollouts, SamplerEndpoint, WorkerSpec
from agentrft.train.context import GradeFn, TrainContext
from agentrft.train.tasks import job_tasks

__all__ = ["ray_rollouts", "worker_tasks"]


def worker_tasks(resolved_config: dict[str, Any], grade: GradeFn | None):
    """In a worker: ``(make_env, reward)`` of the job, as :func:`~agentrft.train.runner.setup` builds them."""
    env, _, _, reward = job_tasks(JobConfig.model_validate(resolved_config), grade)
    return env.make_env, reward


def ray_rollouts(ctx: TrainContext) -> RayRollouts:
    """The run's rollout workers, started on first use (the cluster connected, the workers built)."""
    if ctx.rollout_workers is None:
        cfg = ctx.cfg
        # the env's or the spec's grader is rebuilt in the worker; a function the caller gave travels pickled
        shipped = None if cfg.grader is not None or (cfg.data.env_name() and ctx.grade == ctx.env.grade) else ctx.grade
        build = functools.partial(worker_tasks, cfg.model_dump(mode="json"), shipped)

        def spec(endpoint: SamplerEndpoint) -> WorkerSpec:
            return WorkerSpec(build, ctx.policy.chat_format, endpoint)

        concurrency = max(1, -(-cfg.rollout.max_concurrent_episodes // cfg.runtime.rollout_workers))
        if cfg.sampler.backend == "local":
            ctx.rollout_workers = RayRollouts(spec, cfg.runtime, concurrency=concurrency, serve=ctx.sampler)
        else:
            endpoint = SamplerEndpoint(cfg.sampler.url, cfg.sampler.model, ctx.sampler.max_context,
                                       api_key(cfg.sampler), cfg.sampler.timeout_s)
            ctx.rollout_workers = RayRollouts(spec(endpoint), cfg.runtime, concurrency=concurrency)
    return ctx.rollout_workers
