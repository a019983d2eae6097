"""The Sampler seam: token ids in, token ids (and their logprobs) out.

One method, ``generate``, over a batch of prompts. Implementations: the local
transformers sampler (:mod:`agentrft.rollout.hf_sampler`) and the scripted
test double (:class:`ScriptedSampler`) used to drive rollouts in tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, Sequence


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
        """Continue each prompt. ``len(result) == len(prompts)``."""
        ...


@dataclass
class ScriptedSampler:
    """Test double: returns pre-tokenised completions in order, one per call per prompt.

    ``script`` is a list of token-id lists; each generate() call consumes one
    entry per prompt. Logprobs are a fixed -0.5 so tests can recognise them.
    """

    script: list[list[int]]
    calls: list[list[list[int]]] = field(default_factory=list)

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Completion]:
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
        return out
