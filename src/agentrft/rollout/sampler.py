"""The Sampler seam: token ids in, token ids (and their logprobs) out.

One method, ``generate``, over a batch of prompts. Implementations: the local
transformers sampler (:mod:`agentrft.rollout.hf_sampler`) and the scripted
test double (:class:`ScriptedSampler`) used to drive rollouts in tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol, Sequence


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop_token_ids: tuple[int, ...] = ()  # generation ends after emitting one of these (it is kept)
    seed: int | None = None


@dataclass
class Completion:
    token_ids: list[int]
    logprobs: list[float]  # log-probability of each sampled token under the sampling distribution
    finish_reason: Literal["stop", "length"]


class Sampler(Protocol):
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Completion]:
        """Continue each prompt. ``len(result) == len(prompts)``.

        A sampler that can stream also accepts ``on_token=callback``: ``callback(row, token_id)`` as each token
        is sampled (``HFSampler``, ``ScriptedSampler``); the server streams through it where it exists."""
        ...


@dataclass
class ScriptedSampler:
    """Test double: returns pre-tokenised completions in order, one per call per prompt.

    ``script`` is a list of token-id lists; each generate() call consumes one
    entry per prompt. Logprobs are a fixed -0.5 so tests can recognise them.
    """

    script: list[list[int]]
    calls: list[list[list[int]]] = field(default_factory=list)

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                 on_token: Callable[[int, int], None] | None = None) -> list[Completion]:
        self.calls.append([list(p) for p in prompts])
        out = []
        for _ in prompts:
            if not self.script:
                raise RuntimeError("ScriptedSampler ran out of scripted completions")
            ids = list(self.script.pop(0))
            stopped = bool(ids) and ids[-1] in params.stop_token_ids
            if len(ids) > params.max_new_tokens:
                ids, stopped = ids[: params.max_new_tokens], False
            out.append(Completion(ids, [-0.5] * len(ids), "stop" if stopped else "length"))
        if on_token is not None:  # one token of every row per step, as a batched decoder emits them
            for k in range(max((len(c.token_ids) for c in out), default=0)):
                for row, c in enumerate(out):
                    if k < len(c.token_ids):
                        on_token(row, c.token_ids[k])
        return out
