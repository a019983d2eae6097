"""The batching engine on its own: the scripted sampler, an asyncio loop, no HTTP.

Jobs that wait together and can share a sampler call share it; a seeded
sampled job runs alone; each job gets its own completions and its own streamed
tokens, cut back to its own ``max_new_tokens``; a sampler exception fails only
the batch it hit. The engine module must not load the web framework.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from agentrft.rollout.sampler import SamplingParams, ScriptedSampler
from agentrft.serving.engine import BatchingGenerator

STOP = 99
WINDOW_S = 0.2  # long enough for every job of one asyncio.gather to be waiting when the worker takes a batch


@dataclass
class RecordingSampler(ScriptedSampler):
    """The scripted sampler, also keeping the params of each call."""

    params: list[SamplingParams] = field(default_factory=list)

    def generate(self, prompts, params, on_token=None):
        self.params.append(params)
        return super().generate(prompts, params, on_token)


@dataclass
class LateSampler(RecordingSampler):
    """Hands its tokens over only once every row is generated, one whole row after another (as a backend
    that cannot stream does)."""

    def generate(self, prompts, params, on_token=None):
        out = super().generate(prompts, params)
        for row, c in enumerate(out):
            for token in c.token_ids:
                on_token(row, token)
        return out


def ask(engine: BatchingGenerator, prompt: list[int], *, n: int = 1, max_new_tokens: int = 8,
        temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None, stream: asyncio.Queue | None = None):
    return engine.generate(prompt, n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                           seed=seed, stop_token_ids=(STOP,), stream=stream)


def serve(engine: BatchingGenerator, main):
    """Run ``main()`` on a fresh event loop while the engine's worker runs."""
    engine.start()
    try:
        return asyncio.run(main())
    finally:
        engine.stop()


def drain(q: asyncio.Queue) -> list[tuple[int, int]]:
    items = []
    while not q.empty():
        items.append(q.get_nowait())
    return items


def test_compatible_waiting_jobs_share_one_sampler_call():
    sampler = RecordingSampler([[1, STOP], [2, 2, STOP], [3, STOP], [4, 4, 4, STOP]])
    engine = BatchingGenerator(sampler, max_context=64, max_batch_size=8, batch_window_s=WINDOW_S)

    async def main():
        return await asyncio.gather(ask(engine, [10], max_new_tokens=4), ask(engine, [11, 11], n=2, seed=3),
                                    ask(engine, [12], max_new_tokens=6, top_p=0.5))

    a, b, c = serve(engine, main)
    assert sampler.calls == [[[10], [11, 11], [11, 11], [12]]]  # greedy: seed and top_p play no part
    assert sampler.params[0].max_new_tokens == 8 and sampler.params[0].seed is None
    assert [x.token_ids for x in a] == [[1, STOP]] and [x.finish_reason for x in a] == ["stop"]
    assert [x.token_ids for x in b] == [[2, 2, STOP], [3, STOP]]
    assert [x.token_ids for x in c] == [[4, 4, 4, STOP]]
    assert engine.stats == {"requests": 3, "calls": 1, "largest_call": 4}


def test_a_seeded_sampled_job_runs_alone_and_other_settings_do_not_mix():
    sampler = RecordingSampler([[1, STOP], [2, STOP], [3, STOP], [4, STOP]])
    engine = BatchingGenerator(sampler, max_context=64, batch_window_s=WINDOW_S)

    async def main():
        return await asyncio.gather(ask(engine, [10], temperature=0.7), ask(engine, [11], temperature=0.7, seed=5),
                                    ask(engine, [12], temperature=0.7), ask(engine, [13], temperature=0.9))

    results = serve(engine, main)
    assert sampler.calls == [[[10], [12]], [[11]], [[13]]]
    assert [(p.temperature, p.seed) for p in sampler.params] == [(0.7, None), (0.7, 5), (0.9, None)]
    assert [r[0].token_ids for r in results] == [[1, STOP], [3, STOP], [2, STOP], [4, STOP]]


def test_jobs_that_do_not_fit_together_run_apart():
    sampler = RecordingSampler([[1], [2], [3], [4]])
    # 6 + 4 and 3 + 5 fit alone; together the rows would need 6 + 5 = 11 > 10 tokens
    engine = BatchingGenerator(sampler, max_context=10, max_batch_size=2, batch_window_s=WINDOW_S)

    async def main():
        return await asyncio.gather(ask(engine, [1] * 6, max_new_tokens=4), ask(engine, [2] * 3, max_new_tokens=5),
                                    ask(engine, [3] * 3, max_new_tokens=5), ask(engine, [4] * 3, max_new_tokens=5))

    serve(engine, main)
    assert [[len(p) for p in call] for call in sampler.calls] == [[6], [3, 3], [3]]  # then at most 2 rows a call


def test_rows_are_cut_back_to_their_own_max_new_tokens():
    sampler = RecordingSampler([[5, 6, 7, 8, 9, 10, 11, 12], [20, 21, 22, 23, 24, 25, 26, 27]])
    engine = BatchingGenerator(sampler, max_context=64, batch_window_s=WINDOW_S)
    short_stream, long_stream = asyncio.Queue(), asyncio.Queue()

    async def main():
        return await asyncio.gather(ask(engine, [1], max_new_tokens=3, stream=short_stream),
                                    ask(engine, [2], max_new_tokens=6, stream=long_stream))

    (short,), (long,) = serve(engine, main)
    assert len(sampler.calls) == 1 and sampler.params[0].max_new_tokens == 6  # the batch's longest
    assert (short.token_ids, short.logprobs, short.finish_reason) == ([5, 6, 7], [-0.5] * 3, "length")
    assert (long.token_ids, long.finish_reason) == ([20, 21, 22, 23, 24, 25], "length")
    assert drain(short_stream) == [(0, t) for t in [5, 6, 7]]  # nothing past its own limit is streamed
    assert drain(long_stream) == [(0, t) for t in [20, 21, 22, 23, 24, 25]]


@pytest.mark.parametrize("sampler_cls", [RecordingSampler, LateSampler], ids=["step_by_step", "all_at_the_end"])
def test_each_job_streams_only_its_own_tokens_all_before_its_result(sampler_cls):
    sampler = sampler_cls([[1, 2, 3, STOP], [40, 41, STOP], [50, STOP], [60, 61, 62, 63, 64, STOP]])
    engine = BatchingGenerator(sampler, max_context=64, batch_window_s=WINDOW_S)
    streams = [asyncio.Queue(), asyncio.Queue()]

    async def main():
        async def one(prompt, n, stream):
            result = await ask(engine, prompt, n=n, stream=stream)
            return result, drain(stream)  # the moment the result is in: every token is already there

        return await asyncio.gather(one([7], 1, streams[0]), one([8], 2, streams[1]), ask(engine, [9]))

    (first, first_tokens), (second, second_tokens), third = serve(engine, main)
    assert len(sampler.calls) == 1  # all three shared one call; the unstreamed job did too
    assert first_tokens == [(0, t) for t in [1, 2, 3, STOP]]
    assert [t for c, t in second_tokens if c == 0] == [40, 41, STOP]
    assert [t for c, t in second_tokens if c == 1] == [50, STOP]
    assert len(second_tokens) == 5
    assert [c.token_ids for c in second] == [[40, 41, STOP], [50, STOP]]
    assert third[0].token_ids == [60, 61, 62, 63, 64, STOP]


def test_a_sampler_exception_fails_the_batchs_jobs_and_the_engine_keeps_serving():
    sampler = RecordingSampler([])  # the first call runs out of scripted completions
    engine = BatchingGenerator(sampler, max_context=64, batch_window_s=WINDOW_S)

    async def main():
        failed = await asyncio.gather(ask(engine, [1]), ask(engine, [2], stream=asyncio.Queue()),
                                      return_exceptions=True)
        sampler.script.append([3, STOP])
        return failed, await ask(engine, [3])

    failed, (after,) = serve(engine, main)
    assert [type(e) for e in failed] == [RuntimeError, RuntimeError]
    assert all("ran out" in str(e) for e in failed)
    assert len(sampler.calls) == 2 and len(sampler.calls[0]) == 2  # one batch failed as a whole
    assert after.token_ids == [3, STOP]
    assert engine.stats == {"requests": 1, "calls": 1, "largest_call": 1}  # failed calls are not counted


def test_generate_needs_a_running_engine():
    engine = BatchingGenerator(ScriptedSampler([[1]]), max_context=64)
    with pytest.raises(RuntimeError, match="not running"):
        asyncio.run(ask(engine, [1]))


def test_the_engine_module_does_not_import_the_web_framework():
    out = subprocess.run([sys.executable, "-c", "import agentrft.serving.engine, sys; print('fastapi' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
