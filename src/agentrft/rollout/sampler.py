"""The Sampler seam: token ids in, token ids (and their logprobs) out.

:class:`Sampler` declares everything a caller may use, so no caller probes a
sampler for what it can do:

* ``generate(prompts, params, on_token=None)`` over a batch of prompts. Every
  sampler streams: ``on_token(row, token_id)`` is called for each sampled
  token, as it is sampled where the backend can (the local sampler's decode
  loop), or all at once when the completion arrives where it cannot; either
  way, every token of a row is handed over, in order, before ``generate``
  returns;
* ``max_context``: the most tokens (prompt + completion) one sequence may hold;
* ``release()``: drop whatever was built for the current weights (a prefix
  cache, fused weight copies). The trainer calls it before and after each
  update, so the next ``generate`` samples from the new weights and the
  update's memory peak does not carry stale copies.

Implementations: the local transformers sampler
(:class:`~agentrft.rollout.hf_sampler.HFSampler`) and the scripted test double
(:class:`ScriptedSampler`) that drives rollouts, servers and trainers in tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol, Sequence, runtime_checkable

TokenCallback = Callable[[int, int], None]
"""``on_token(row, token_id)``: ``row`` indexes the prompts of the ``generate`` call."""


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


@runtime_checkable
class Sampler(Protocol):
    """What every sampler provides (see the module docstring for the contract of each member)."""

    max_context: int
    """Most tokens one sequence may hold, prompt and completion together."""

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                 on_token: TokenCallback | None = None) -> list[Completion]:
        """Continue each prompt; ``len(result) == len(prompts)``. ``on_token`` sees every sampled token."""
        ...

    def release(self) -> None:
        """Drop what was built for the current weights; the next ``generate`` rebuilds what it needs."""
        ...


@dataclass
class ScriptedSampler:
    """Test double: returns pre-tokenised completions in order, one per call per prompt.

    ``script`` is a list of token-id lists; each generate() call consumes one
    entry per prompt. Logprobs are a fixed -0.5 so tests can recognise them.
    ``releases`` counts :meth:`release` calls.
    """

    script: list[list[int]]
    max_context: int = 1 << 20
    calls: list[list[list[int]]] = field(default_factory=list)
    releases: int = 0

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                 on_token: TokenCallback | None = None) -> list[Completion]:
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

    def release(self) -> None:
        self.releases += 1
