"""The batching engine: one worker thread owns the sampler, and waiting requests that can share a call share it.

The sampler is not thread-safe (its prefix cache and fused weights are shared
state), so one worker thread makes every ``generate`` call. Requests wait in a
queue; whenever the worker is free it takes the waiting requests that can
share one ``generate`` call and decodes them as one batch. Requests can share
a call when they have the same temperature, top_p and stop tokens and fit the
context together; a seeded request at temperature > 0 always runs alone,
because one generator draws for the whole call and batch mates would change
what a seed gives. Greedy rows do not depend on their batch mates (left
padding is exact), so batching never changes a greedy answer. Rows run to the
batch's longest ``max_new_tokens`` and each is cut back to its own (the first k
tokens of a longer run are what a run of k tokens samples).

Streaming: the sampler's ``on_token`` callback (called from its decode loop,
on the worker thread) forwards each token to the stream of the request that
owns the row, on that request's event loop; a batch mate's tokens never reach
another request's stream. Every sampler hands over each token before
``generate`` returns, so a stream holds all of a completion's tokens by the
time its result is settled.

This module knows nothing of HTTP: it takes token ids and returns
:class:`~agentrft.rollout.sampler.Completion` objects, so it is tested
directly with the scripted sampler.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from dataclasses import dataclass

from agentrft.rollout.sampler import Completion, Sampler, SamplingParams

__all__ = ["BatchingGenerator"]


@dataclass(eq=False)
class _Job:
    prompt: list[int]
    n: int
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop_token_ids: tuple[int, ...]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    stream: asyncio.Queue | None = None  # (choice index, token id) as they are sampled, for stream: true

    def batch_key(self) -> tuple:
        """Jobs with equal keys can share one sampler call."""
        if self.temperature <= 0:
            return ("greedy", self.stop_token_ids)  # argmax: top_p and seed play no part
        if self.seed is not None:
            return ("seeded", id(self))  # alone: batch mates would change what the seed draws
        return ("sampled", self.temperature, self.top_p, self.stop_token_ids)


class BatchingGenerator:
    """Owns a sampler on one worker thread; requests waiting together with compatible settings share a call."""

    def __init__(self, sampler: Sampler, max_context: int, max_batch_size: int = 8, batch_window_s: float = 0.0):
        self.sampler = sampler
        self.max_context = max_context
        self.max_batch_size = max_batch_size
        self.batch_window_s = batch_window_s
        self.stats = {"requests": 0, "calls": 0, "largest_call": 0}
        """Requests served, sampler calls made, and the most sequences one call decoded."""
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="agentrft-sampler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    async def generate(self, prompt: list[int], *, n: int, max_new_tokens: int, temperature: float, top_p: float,
                       seed: int | None, stop_token_ids: tuple[int, ...],
                       stream: asyncio.Queue | None = None) -> list[Completion]:
        """``n`` completions of ``prompt``; raises what the sampler raised. With ``stream``, each sampled token
        is also put there as ``(choice index, token id)`` as it comes (all of them before this returns)."""
        if self._thread is None:
            raise RuntimeError("the generator is not running (start() it, or serve the app through its lifespan)")
        loop = asyncio.get_running_loop()
        job = _Job(list(prompt), n, max_new_tokens, temperature, top_p, seed, tuple(stop_token_ids), loop,
                   loop.create_future(), stream)
        self._queue.put(job)
        return await job.future

    def _work(self) -> None:
        pending: list[_Job] = []
        while True:
            if not pending:
                job = self._queue.get()
                if job is None:
                    return
                pending.append(job)
                if self.batch_window_s:
                    time.sleep(self.batch_window_s)
            while True:  # everything else already waiting
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    for j in pending:
                        _settle(j, error=RuntimeError("the server is shutting down"))
                    return
                pending.append(job)
            batch = self._take_batch(pending)
            if batch:
                self._run(batch)

    def _take_batch(self, pending: list[_Job]) -> list[_Job]:
        """Remove and return the oldest job plus the waiting jobs that can share its call."""
        live = [j for j in pending if not j.future.cancelled()]  # the client went away
        pending.clear()
        if not live:
            return []
        first, rest = live[0], live[1:]
        batch, key = [first], first.batch_key()
        rows, longest, most = first.n, len(first.prompt), first.max_new_tokens
        for job in rest:
            fits = (rows + job.n <= self.max_batch_size
                    and max(longest, len(job.prompt)) + max(most, job.max_new_tokens) <= self.max_context)
            if job.batch_key() == key and fits:
                batch.append(job)
                rows, longest, most = rows + job.n, max(longest, len(job.prompt)), max(most, job.max_new_tokens)
            else:
                pending.append(job)
        return batch

    def _run(self, batch: list[_Job]) -> None:
        first = batch[0]
        params = SamplingParams(
            temperature=first.temperature,
            top_p=first.top_p,
            max_new_tokens=max(j.max_new_tokens for j in batch),
            stop_token_ids=first.stop_token_ids,
            seed=first.seed if first.batch_key()[0] == "seeded" else None,
        )
        prompts = [j.prompt for j in batch for _ in range(j.n)]
        rows = [(j, c) for j in batch for c in range(j.n)]
        sent = [0] * len(rows)

        def on_token(row: int, token: int) -> None:  # on this worker thread, from the decode loop
            job, choice = rows[row]
            if job.stream is not None and sent[row] < job.max_new_tokens:  # rows run to the batch's longest
                sent[row] += 1
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is reading any more
                    job.loop.call_soon_threadsafe(job.stream.put_nowait, (choice, token))

        try:
            completions = self.sampler.generate(prompts, params, on_token=on_token)
        except Exception as e:  # the requests fail, the server keeps serving
            for j in batch:
                _settle(j, error=e)
            return
        self.stats["calls"] += 1
        self.stats["requests"] += len(batch)
        self.stats["largest_call"] = max(self.stats["largest_call"], len(prompts))
        i = 0
        for j in batch:
            _settle(j, result=[_truncate(c, j.max_new_tokens) for c in completions[i : i + j.n]])
            i += j.n


def _truncate(c: Completion, max_new_tokens: int) -> Completion:
    """The first ``max_new_tokens`` of a row that ran to its batch's longer limit."""
    if len(c.token_ids) <= max_new_tokens:
        return c
    return Completion(c.token_ids[:max_new_tokens], c.logprobs[:max_new_tokens], "length")


def _settle(job: _Job, result: list[Completion] | None = None, error: BaseException | None = None) -> None:
    """Hand the outcome to the request's event loop (futures are not thread-safe)."""

    def settle() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        job.loop.call_soon_threadsafe(settle)
