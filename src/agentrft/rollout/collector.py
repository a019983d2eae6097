"""Per-episode rollouts: each rollout advances on its own, and rollouts ready to sample together share a call.

:func:`~agentrft.rollout.episode.run_episodes` advances every rollout in
lockstep: one batched sampler call per turn, then every rollout's tool calls,
then the next turn, so each turn lasts as long as its slowest tool call and
the sampler idles while tools run. Here each rollout (an *episode*) samples
its next turn as soon as its own tools have returned. The turns are the
episode loop's own (:func:`~agentrft.rollout.episode.start_episode` and
:func:`~agentrft.rollout.episode.advance_episodes` on a one-rollout list), so
the trajectories carry the same records: token ids and kinds, logprobs, tool
calls, stop reasons, typed errors as data.

Sampling, two ways (``batch_requests``):

* ``True`` (a local sampler, which is not thread-safe): one worker thread
  owns the sampler (:class:`~agentrft.rollout.batching.BatchingGenerator`)
  and the turns of every episode waiting when it frees up share its next
  ``generate`` call: continuous batching of whatever is ready.
* ``False`` (a remote, thread-safe sampler such as
  :class:`~agentrft.rollout.openai_compat_sampler.OpenAICompatSampler`): each
  episode sends its own request when it is ready, concurrently with the
  others, and the server (vLLM, ``agentrft serve``) batches them.

Seeds: each episode's turn gets its own seed (:func:`episode_seed`, a pure
function of the rollout seed, the episode's task-major index and the turn),
so the samples of a group differ and, where each request is sampled alone
(``batch_requests=False``: a remote request per turn), an episode draws the
same tokens however the others are timed. With ``batch_requests=True`` and
``temperature > 0`` a seeded call's draws depend on which episodes shared it,
which depends on timing: such a rerun is not token-identical (lockstep's is).
Greedy sampling does not depend on batch mates, so at ``temperature: 0`` the
trajectories equal lockstep's.

Failures stay per rollout: a failing tool or environment is that rollout's
record; a failing sampler call fails the rollouts that shared it (only the one
with ``batch_requests=False``).
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

from agentrft.config import RolloutConfig
from agentrft.models.chat_format import ChatFormat
from agentrft.rollout.batching import BatchingGenerator
from agentrft.rollout.episode import advance_episodes, run_episodes, start_episode, turn_seed
from agentrft.rollout.sampler import Completion, Sampler, SamplingParams, TokenCallback
from agentrft.tools.base import run_sync
from agentrft.tools.environment import Environment
from agentrft.tools.guardrails import Guardrails
from agentrft.types import TaskRow, Trajectory

__all__ = ["episode_seed", "play_episode", "run_episodes_concurrently"]


def episode_seed(config: RolloutConfig, episode: int, turn: int) -> int | None:
    """The seed of turn ``turn`` of episode ``episode`` (task-major index); None when ``config.seed`` is None.

    Lockstep's turn seed mixed with the episode index (``+ episode`` would repeat a neighbour's next turn)."""
    base = turn_seed(config, turn)
    if base is None:
        return None
    return (base ^ ((episode + 1) * 0x9E3779B97F4A7C15)) % (2**31)


class _EngineSampler:
    """A :class:`Sampler` whose calls queue on a :class:`BatchingGenerator` and wait for its worker.

    Called from the episode threads; the engine's futures live on the tools background loop."""

    def __init__(self, engine: BatchingGenerator):
        self.engine = engine
        self.max_context = engine.max_context

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                 on_token: TokenCallback | None = None) -> list[Completion]:
        async def ask() -> list[list[Completion]]:
            return await asyncio.gather(*(
                self.engine.generate(list(p), n=1, max_new_tokens=params.max_new_tokens,
                                     temperature=params.temperature, top_p=params.top_p, seed=params.seed,
                                     stop_token_ids=params.stop_token_ids)
                for p in prompts))

        out = [choices[0] for choices in run_sync(ask())]
        if on_token is not None:  # handed over once each completion arrived, as a remote sampler does
            for row, comp in enumerate(out):
                for t in comp.token_ids:
                    on_token(row, t)
        return out

    def release(self) -> None:
        self.engine.sampler.release()


def play_episode(row: TaskRow, k: int, episode: int, make_env: Callable[[TaskRow], Environment | None],
                 sampler: Sampler, chat_format: ChatFormat, config: RolloutConfig,
                 guardrails: Guardrails | None = None) -> Trajectory:
    """Sample ``k`` of ``row`` played to its end on its own: episode ``episode`` (task-major index) of a
    collection, each turn seeded by :func:`episode_seed`. The per-episode collector and the Ray rollout
    workers (:mod:`agentrft.runtime`) play every rollout this way, so both draw the same tokens."""
    lv = start_episode(row, k, make_env, chat_format, config, guardrails)
    turn = 0
    while not lv.done:
        turn += 1
        advance_episodes([lv], sampler, chat_format, config, turn, episode_seed(config, episode, turn))
    return lv.traj


def run_episodes_concurrently(
    tasks: list[TaskRow],
    make_env: Callable[[TaskRow], Environment | None],
    sampler: Sampler,
    chat_format: ChatFormat,
    config: RolloutConfig = RolloutConfig(),
    samples_per_task: int = 1,
    max_concurrent_episodes: int = 64,
    batch_requests: bool = True,
    on_finished: Callable[[Trajectory], None] | None = None,
    guardrails: Guardrails | None = None,
) -> list[Trajectory]:
    """Roll out every task ``samples_per_task`` times, each rollout on its own; trajectories in task-major order.

    The same inputs and outputs as :func:`~agentrft.rollout.episode.run_episodes`, plus
    ``max_concurrent_episodes`` (rollouts in flight at once; the next starts when one ends, and it bounds a
    batched call) and ``batch_requests`` (see the module docstring: True for a local sampler, False for a
    remote one). ``on_finished`` is called as each rollout ends, from its episode's thread, one call at a time.
    """
    episodes = [(row, k) for row in tasks for k in range(samples_per_task)]
    if not episodes:
        return []
    if max_concurrent_episodes < 1:
        raise ValueError(f"max_concurrent_episodes must be >= 1, got {max_concurrent_episodes}")
    engine = None
    turn_sampler: Sampler = sampler
    if batch_requests:
        engine = BatchingGenerator(sampler, sampler.max_context, max_batch_size=max_concurrent_episodes,
                                   share_seeded_calls=True)
        engine.start()
        turn_sampler = _EngineSampler(engine)
    report = threading.Lock()

    def episode(index: int) -> Trajectory:
        row, k = episodes[index]
        traj = play_episode(row, k, index, make_env, turn_sampler, chat_format, config, guardrails)
        if on_finished is not None:
            with report:
                on_finished(traj)
        return traj

    try:
        workers = min(max_concurrent_episodes, len(episodes))
        with ThreadPoolExecutor(workers, thread_name_prefix="agentrft-episode") as pool:
            return list(pool.map(episode, range(len(episodes))))
    finally:
        if engine is not None:
            engine.stop()


def collect_episodes(tasks: list[TaskRow], make_env: Callable[[TaskRow], Environment | None], sampler: Sampler,
                     chat_format: ChatFormat, config: RolloutConfig = RolloutConfig(), samples_per_task: int = 1,
                     batch_requests: bool = True) -> list[Trajectory]:
    """Roll out ``tasks`` the way ``config.mode`` says: :func:`~agentrft.rollout.episode.run_episodes` (lockstep)
    or :func:`run_episodes_concurrently` (per episode). ``batch_requests``: see the latter (``False`` for a
    remote sampler, whose server batches concurrent requests itself)."""
    if config.mode == "per_episode":
        return run_episodes_concurrently(tasks, make_env, sampler, chat_format, config, samples_per_task,
                                         max_concurrent_episodes=config.max_concurrent_episodes,
                                         batch_requests=batch_requests)
    return run_episodes(tasks, make_env, sampler, chat_format, config, samples_per_task=samples_per_task)
