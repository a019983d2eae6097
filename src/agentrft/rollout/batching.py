"""The batching engine: one worker thread owns the sampler, and waiting requests that can share a call share it.

Two users: the OpenAI-compatible server (:mod:`agentrft.serving`, which
re-exports it as ``agentrft.serving.engine``) batches its HTTP requests here,
and the per-episode collector (:mod:`agentrft.rollout.collector`) batches the
turns of rollouts that are ready to sample at the same time (continuous
batching: whatever is waiting when the sampler frees up shares its next call).

The sampler is not thread-safe (its prefix cache and fused weights are shared
state), so one worker thread makes every ``generate`` call. Requests wait in a
queue; whenever the worker is free it takes the waiting requests that can
share one ``generate`` call and decodes them as one batch. Requests can share
a call when they have the same temperature, top_p and stop tokens and fit the
context together; a seeded request at temperature > 0 always runs alone,
because one generator draws for the whole call and batch mates would change
what a seed gives (the collector, which cannot keep a seeded local sampler
busy one row at a time, sets ``share_seeded_calls``: seeded jobs then share
calls too, and each call is seeded from its jobs' seeds, so what a seed
gives depends on which jobs shared the call). Greedy rows do not depend on their batch mates (left
padding is exact), so batching never changes a greedy answer. Rows run to the
batch's longest ``max_new_tokens`` and each is cut back to its own (the first k
tokens of a longer run are what a run of k tokens samples).

Streaming: the sampler's ``on_token`` callback (called from its decode loop,
on the worker thread) forwards each token to the stream of the request that
owns the row, on that request's event loop; a batch mate's tokens never reach
another request's stream. Every sampler hands over each token before
``generate`` returns, so a stream holds all of a completion's tokens by the
time its result is settled.

Cancellation: a job whose client went away is cancelled
(:meth:`BatchingGenerator.cancel`, or cancelling the task that awaits
:meth:`BatchingGenerator.result`). A cancelled job still waiting is dropped. A
batch being decoded stops at its next token once every job in it is
cancelled: ``on_token`` raises :class:`GenerationCancelled`, which leaves the
sampler's ``generate`` (``on_token`` runs inline in its decode loop). While
one job of the batch is still wanted, the batch decodes on for it and the
cancelled jobs' tokens are no longer streamed: stopping single rows would need
the sampler's help, and requeueing the wanted jobs would throw their work away
and, when sampled, change tokens already streamed.

Back-pressure: at most ``max_queued`` jobs wait for the worker (the batch
being decoded does not count); :meth:`BatchingGenerator.submit` raises
:class:`QueueFull` beyond that, and a cancelled job frees its place at once.
No job stays referenced once it is settled (``stats`` holds counts only).

Adapters (LoRA hot-swap, :mod:`~agentrft.serving.adapters`): a job may name an
adapter; only jobs naming the same one share a call, and before each call the
worker hands the batch's adapter to ``select_weights`` while it holds
``weights_lock``. Whoever changes the weights (loading or unloading an
adapter) takes the same lock, so no batch ever runs on half-swapped weights.

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
from typing import Callable

from agentrft.rollout.sampler import Completion, Sampler, SamplingParams

__all__ = ["BatchingGenerator", "GenerationCancelled", "QueueFull"]


class GenerationCancelled(Exception):
    """Raised by the engine's ``on_token`` to stop a sampler call whose every job was cancelled."""


class QueueFull(Exception):
    """:meth:`BatchingGenerator.submit` refuses a job: ``max_queued`` jobs are already waiting."""


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
    adapter: str | None = None  # the LoRA adapter to sample with (None: the served model as loaded)
    waiting: bool = True  # queued, not yet taken into a batch (guarded by the engine's lock)
    cancelled: bool = False  # the client went away; read by the worker thread

    def batch_key(self, share_seeded: bool = False) -> tuple:
        """Jobs with equal keys can share one sampler call."""
        if self.temperature <= 0:
            return ("greedy", self.stop_token_ids, self.adapter)  # argmax: top_p and seed play no part
        if self.seed is not None:
            if share_seeded:
                return ("seeded", self.temperature, self.top_p, self.stop_token_ids, self.adapter)
            return ("seeded", id(self))  # alone: batch mates would change what the seed draws
        return ("sampled", self.temperature, self.top_p, self.stop_token_ids, self.adapter)


class BatchingGenerator:
    """Owns a sampler on one worker thread; requests waiting together with compatible settings share a call."""

    def __init__(self, sampler: Sampler, max_context: int, max_batch_size: int = 8, batch_window_s: float = 0.0,
                 max_queued: int | None = None, share_seeded_calls: bool = False):
        self.sampler = sampler
        self.share_seeded_calls = share_seeded_calls
        """Seeded jobs at temperature > 0 share calls like unseeded ones, each call seeded from its jobs' seeds
        (False: each runs alone, so a seed always draws the same tokens)."""
        self.max_context = max_context
        self.max_batch_size = max_batch_size
        self.batch_window_s = batch_window_s
        self.max_queued = max_queued
        """Most jobs waiting for the worker at once (None: no limit); :meth:`submit` refuses one more."""
        self.stats = {"requests": 0, "calls": 0, "largest_call": 0}
        """Requests served, sampler calls made, and the most sequences one call decoded."""
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._queued = 0
        self._thread: threading.Thread | None = None
        self.weights_lock = threading.Lock()
        """Held by the worker while it samples a batch; take it to change the sampler's weights between batches."""
        self.select_weights: Callable[[str | None], None] | None = None
        """Called on the worker, under ``weights_lock``, before each batch with the batch's adapter (None: the
        served model as loaded); set by :func:`~agentrft.serving.adapters.enable_lora`."""

    @property
    def queued(self) -> int:
        """Jobs waiting for the worker (submitted, not cancelled, not yet in a batch)."""
        return self._queued

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="agentrft-sampler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def submit(self, prompt: list[int], *, n: int, max_new_tokens: int, temperature: float, top_p: float,
               seed: int | None, stop_token_ids: tuple[int, ...], stream: asyncio.Queue | None = None,
               adapter: str | None = None) -> _Job:
        """Queue a job for ``n`` completions of ``prompt``, from the event loop that will await it (see
        :meth:`result`); :class:`QueueFull` when ``max_queued`` jobs are waiting. With ``stream``, each sampled
        token is also put there as ``(choice index, token id)`` as it comes (all of them before the result)."""
        if self._thread is None:
            raise RuntimeError("the generator is not running (start() it, or serve the app through its lifespan)")
        loop = asyncio.get_running_loop()
        job = _Job(list(prompt), n, max_new_tokens, temperature, top_p, seed, tuple(stop_token_ids), loop,
                   loop.create_future(), stream, adapter)
        with self._lock:
            if self.max_queued is not None and self._queued >= self.max_queued:
                raise QueueFull(f"{self._queued} requests are already waiting for the sampler")
            self._queued += 1
        self._queue.put(job)
        return job

    async def result(self, job: _Job) -> list[Completion]:
        """The job's completions; raises what the sampler raised. Cancelling the awaiting task cancels the job."""
        try:
            return await job.future
        except asyncio.CancelledError:
            self.cancel(job)
            raise

    def cancel(self, job: _Job) -> None:
        """The client went away (call it from the job's event loop): drop the job if it is still waiting, stop
        forwarding its tokens, and stop its batch at the next token once no job in the batch is wanted."""
        with self._lock:
            if job.waiting:
                job.waiting = False
                self._queued -= 1
            job.cancelled = True
        job.future.cancel()

    async def generate(self, prompt: list[int], *, n: int, max_new_tokens: int, temperature: float, top_p: float,
                       seed: int | None, stop_token_ids: tuple[int, ...],
                       stream: asyncio.Queue | None = None) -> list[Completion]:
        """:meth:`submit` and :meth:`result` in one call."""
        return await self.result(self.submit(prompt, n=n, max_new_tokens=max_new_tokens, temperature=temperature,
                                             top_p=top_p, seed=seed, stop_token_ids=stop_token_ids, stream=stream))

    def _work(self) -> None:
        pending: list[_Job] = []
        while True:
            if not pending:
                first = self._queue.get()
                if first is None:
                    return
                pending.append(first)
                del first  # a settled job must not stay referenced from here
                if self.batch_window_s:
                    time.sleep(self.batch_window_s)
            if not self._take_waiting(pending):
                for j in pending:
                    self._leave_queue(j)
                    _settle(j, error=RuntimeError("the server is shutting down"))
                return
            batch = self._take_batch(pending)
            if batch:
                self._run(batch)
            del batch  # nor its batch

    def _take_waiting(self, pending: list[_Job]) -> bool:
        """Move every job already waiting into ``pending``; False when the engine is stopping."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return True
            if job is None:
                return False
            pending.append(job)

    def _leave_queue(self, job: _Job) -> bool:
        """Mark ``job`` as no longer waiting; False when it was cancelled."""
        with self._lock:
            if job.waiting:
                job.waiting = False
                self._queued -= 1
            return not job.cancelled

    def _take_batch(self, pending: list[_Job]) -> list[_Job]:
        """Remove and return the oldest job plus the waiting jobs that can share its call."""
        live = [j for j in pending if not j.cancelled]  # the client went away
        pending.clear()
        if not live:
            return []
        first, rest = live[0], live[1:]
        batch, key = [first], first.batch_key(self.share_seeded_calls)
        rows, longest, most = first.n, len(first.prompt), first.max_new_tokens
        for job in rest:
            fits = (rows + job.n <= self.max_batch_size
                    and max(longest, len(job.prompt)) + max(most, job.max_new_tokens) <= self.max_context)
            if job.batch_key(self.share_seeded_calls) == key and fits:
                batch.append(job)
                rows, longest, most = rows + job.n, max(longest, len(job.prompt)), max(most, job.max_new_tokens)
            else:
                pending.append(job)
        return [j for j in batch if self._leave_queue(j)]  # one cancelled meanwhile is dropped

    def _run(self, batch: list[_Job]) -> None:
        first = batch[0]
        params = SamplingParams(
            temperature=first.temperature,
            top_p=first.top_p,
            max_new_tokens=max(j.max_new_tokens for j in batch),
            stop_token_ids=first.stop_token_ids,
            seed=_call_seed(batch) if first.batch_key()[0] == "seeded" else None,
        )
        prompts = [j.prompt for j in batch for _ in range(j.n)]
        rows = [(j, c) for j in batch for c in range(j.n)]
        sent = [0] * len(rows)

        def on_token(row: int, token: int) -> None:  # on this worker thread, from the decode loop
            job, choice = rows[row]
            if job.cancelled:
                if all(j.cancelled for j in batch):
                    raise GenerationCancelled  # leaves the sampler's generate: nobody wants this call any more
                return
            if job.stream is not None and sent[row] < job.max_new_tokens:  # rows run to the batch's longest
                sent[row] += 1
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is reading any more
                    job.loop.call_soon_threadsafe(job.stream.put_nowait, (choice, token))

        try:
            with self.weights_lock:
                if self.select_weights is not None:
                    self.select_weights(first.adapter)
                elif first.adapter is not None:
                    raise LookupError(f"adapter {first.adapter!r}: this server serves no adapters")
                completions = self.sampler.generate(prompts, params, on_token=on_token)
        except Exception as e:  # the requests fail (or were all cancelled), the server keeps serving
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


def _call_seed(batch: list[_Job]) -> int:
    """The seed of a seeded call: its one job's own seed, or a mix of its jobs' seeds in batch order."""
    if len(batch) == 1:
        return batch[0].seed  # type: ignore[return-value]
    mixed = 0
    for j in batch:
        mixed = (mixed * 0x100000001B3 ^ int(j.seed)) & (2**63 - 1)  # type: ignore[arg-type]
    return mixed % (2**31)


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
