"""Local transformers sampler: batched, KV-cached sampling with per-token logprobs.

Why a hand-written decode loop instead of ``model.generate``: we need the exact
sampled token ids *and* the log-probability of each under the distribution it
was drawn from, a per-call seed, and no hidden post-processing (repetition
penalties, forced EOS, re-tokenisation) that would make the record differ from
what the policy did. The loop is small: prefill the left-padded batch once,
then one forward step per new token reusing the KV cache.

Logprob convention: ``log softmax(logits / temperature)`` of the sampled token,
before top-p truncation (top-p only restricts which tokens may be drawn). With
``temperature == 0`` sampling is greedy and logprobs are those of
``softmax(logits)``. The trainer recomputes logprobs with the same temperature,
so the PPO ratio starts at 1 up to numerical noise.

Prefix cache: in a multi-turn rollout each turn's prompt is the previous
prompt plus the sampled turn plus tool output, so re-running the whole prefix
every turn costs most of the time. The sampler keeps each row's KV cache after
generation, keyed by the exact token ids it covers, and the next call only
prefills the new suffix. Rows are laid out as ``[pad | cached prefix | pad |
new suffix]`` with an attention mask that has holes and explicit position
ids, so one batched forward serves rows with different cached lengths. The
cache is dropped whenever the weights change (parameter version counters),
so a training step can never be sampled against stale keys and values.
Rows of one call that start alike (every task's first turn opens with the same
system prompt and tool schemas; the rows of a group are identical) share one
prefill of their longest common prefix.

Shapes: B = number of prompts, P = longest prompt, T = new tokens so far,
C = longest cached prefix, S = longest uncached suffix, H/D = KV heads/dim.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from agentrft.algo.logprobs import CACHE_KEYWORD
from agentrft.models.onednn import Choice, choose
from agentrft.rollout.fused_decoder import FusedDecoder, supports
from agentrft.rollout.sampler import Completion, SamplingParams, TokenCallback


class _GrowingLayer(DynamicLayer):
    """A :class:`DynamicLayer` that appends in place into spare capacity instead of ``torch.cat``.

    ``DynamicLayer.update`` concatenates, copying the whole cache of every
    layer at every decoded token: at a 1,500-token context and batch 16 that
    is ~1 GB of memory traffic per token on the bundled model, more than the
    matmuls. Here the buffer doubles when full (amortised O(1) per token) and
    ``keys``/``values`` are views of its filled part, so everything that reads
    them (attention, ``get_seq_length``, our prefix cache) sees the same tensors.
    """

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self._kbuf = self._vbuf = None
        cur = self.get_seq_length()
        new = key_states.shape[-2]
        if self._kbuf is None or cur + new > self._kbuf.shape[-2]:
            capacity = max(2 * (cur + new), cur + new + 64)
            kbuf = key_states.new_empty((*key_states.shape[:-2], capacity, key_states.shape[-1]))
            vbuf = value_states.new_empty((*value_states.shape[:-2], capacity, value_states.shape[-1]))
            if cur:
                kbuf[..., :cur, :] = self.keys
                vbuf[..., :cur, :] = self.values
            self._kbuf, self._vbuf = kbuf, vbuf
        self._kbuf[..., cur : cur + new, :] = key_states
        self._vbuf[..., cur : cur + new, :] = value_states
        self.keys = self._kbuf[..., : cur + new, :]
        self.values = self._vbuf[..., : cur + new, :]
        return self.keys, self.values


def _new_cache() -> DynamicCache:
    """An empty cache whose layers grow in place (see :class:`_GrowingLayer`)."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = _GrowingLayer
    return cache


def _accepts_logits_to_keep(model) -> bool:
    """Whether ``model.forward`` takes ``logits_to_keep`` (transformers' causal LMs do; peft forwards it)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


class HFSampler:
    """Batched sampling from a local Hugging Face causal LM (CPU fp32 or GPU); a :class:`Sampler`."""

    def __init__(self, model, pad_token_id: int, max_batch_size: int = 16, max_context: int | None = None,
                 prefix_cache_tokens: int = 65_536, fused: bool | None = None, cpu_matmul: Choice = "auto"):
        self.model = model
        supported, ref = supports(model), next(model.parameters())
        if fused and not supported:
            raise ValueError(f"fused decoding does not support {type(model).__name__}; use fused=None or False")
        self.fused = supported and ref.dtype == torch.float32 if fused is None else bool(fused)
        """Sample through :class:`FusedDecoder` (adapters folded in, q/k/v and gate/up fused; with oneDNN
        1.8x faster decoding on CPU, measured). None: float32 models of a supported architecture (in
        bfloat16 transformers upcasts inside its norms, which the fused forward does not copy)."""
        self.onednn = self.fused and choose(cpu_matmul, ref.device, ref.dtype)
        """The fused decoder's products go through oneDNN (``training.cpu_matmul``; :mod:`agentrft.models.onednn`)."""
        self._decoder: FusedDecoder | None = None
        self.pad_token_id = int(pad_token_id)
        self.max_batch_size = max_batch_size
        self.max_context = max_context or int(getattr(model.config, "max_position_embeddings", 8192))
        self.prefix_cache_tokens = prefix_cache_tokens
        """Most tokens whose keys/values are kept between calls (0 disables the prefix cache)."""
        self._cache: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self._cache_weights_version: int | None = None
        self._shared: set[tuple[int, ...]] = set()  # common-prefix entries: kept when a row extends them
        self.stats = {"prefill_tokens": 0, "cached_tokens": 0, "shared_prefix_tokens": 0}
        self._keep_last = {"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}

    def reset_cache(self) -> None:
        """Empty the prefix cache only (the fused weights stay): what ``bench/prefix_cache.py`` compares."""
        self._cache.clear()
        self._shared.clear()

    def release(self) -> None:
        """Drop what was built for the current weights (prefix cache, fused weights): call before training on
        them, so the update's memory peak does not carry them (both would be rebuilt anyway)."""
        self.reset_cache()
        self._decoder = None
        self._cache_weights_version = None

    def _forward(self, input_ids, attention_mask, position_ids, past) -> torch.Tensor:
        """Next-token logits [B, V] of the last position; ``past`` gains the new keys/values."""
        if self.fused:
            if self._decoder is None:
                self._decoder = FusedDecoder(self.model, onednn=self.onednn)
            return self._decoder.forward(input_ids, attention_mask, position_ids, past)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         **{CACHE_KEYWORD: past}, use_cache=True, **self._keep_last)
        return out.logits[:, -1, :]

    def _weights_version(self) -> int:
        return sum(p._version for p in self.model.parameters())

    def _lookup(self, prompt: Sequence[int]) -> tuple[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] | None:
        """The longest cached entry that is a proper prefix of ``prompt`` (at least one token left to feed)."""
        best = None
        for key, kv in self._cache.items():
            n = len(key)
            if n < len(prompt) and (best is None or n > len(best[0])) and tuple(prompt[:n]) == key:
                best = (key, kv)
        return best

    def _store(self, key: tuple[int, ...], kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self._cache[key] = kv
        self._cache.move_to_end(key)
        while self._cache and sum(len(k) for k in self._cache) > self.prefix_cache_tokens:
            old, _ = self._cache.popitem(last=False)
            self._shared.discard(old)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                 on_token: TokenCallback | None = None) -> list[Completion]:
        """Continue each prompt. ``on_token(row, token_id)``, when given, is called for each token as soon as it
        is sampled (the row indexes ``prompts``), from the calling thread: what a streaming server forwards."""
        version = self._weights_version()
        if version != self._cache_weights_version:
            self.release()
            self._cache_weights_version = version
        out: list[Completion] = []
        gen = torch.Generator(device="cpu")
        if params.seed is not None:
            gen.manual_seed(int(params.seed))
        else:
            gen.seed()
        for start in range(0, len(prompts), self.max_batch_size):
            chunk = prompts[start : start + self.max_batch_size]
            if self.prefix_cache_tokens:
                self._share_common_prefix(chunk)
            out.extend(self._generate_batch(chunk, params, gen, on_token, start))
        return out

    @torch.no_grad()
    def _generate_batch(self, prompts: Sequence[Sequence[int]], params: SamplingParams, gen: torch.Generator,
                        on_token: TokenCallback | None = None, first_row: int = 0) -> list[Completion]:
        model, device = self.model, self.device
        was_training = model.training
        model.eval()
        B = len(prompts)
        P = max(len(p) for p in prompts)
        if P == 0:
            raise ValueError("empty prompt")
        max_new = max(0, min(params.max_new_tokens, self.max_context - P))
        hits = [self._lookup(p) if self.prefix_cache_tokens else None for p in prompts]
        cached = [len(h[0]) if h else 0 for h in hits]
        C = max(cached)
        S = max(len(p) - c for p, c in zip(prompts, cached))
        # [pad | cached prefix (right-aligned in C) | pad | suffix (right-aligned in S)]
        input_ids = torch.full((B, S), self.pad_token_id, dtype=torch.long)
        attn = torch.zeros((B, C + S), dtype=torch.long)
        for i, (p, c) in enumerate(zip(prompts, cached)):
            suffix = list(p[c:])
            input_ids[i, S - len(suffix) :] = torch.tensor(suffix, dtype=torch.long)
            attn[i, C - c : C] = 1
            attn[i, C + S - len(suffix) :] = 1
        input_ids, attn = input_ids.to(device), attn.to(device)
        position_ids = (attn.cumsum(-1) - 1).clamp(min=0)[:, C:]  # [B, S]
        past = self._assemble_cache(hits, C, device) if C else _new_cache()
        self.stats["cached_tokens"] += sum(cached)
        self.stats["prefill_tokens"] += sum(len(p) - c for p, c in zip(prompts, cached))

        stop_ids = torch.tensor(list(params.stop_token_ids) or [-1], device=device)
        tokens: list[list[int]] = [[] for _ in range(B)]
        logps: list[list[float]] = [[] for _ in range(B)]
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        stopped = [False] * B

        step_ids, step_pos = input_ids, position_ids
        for _ in range(max_new):
            # logits_to_keep=1: the prefill needs the next-token logits of the last position only; the full
            # [B, S, V] logits of a 400-token prompt would be most of the prefill's FLOPs and memory.
            logits = self._forward(step_ids, attn, step_pos, past).float()  # [B, V]
            next_tok, next_logp = self._sample(logits, params, gen)  # [B], [B]
            next_tok = torch.where(finished, torch.full_like(next_tok, self.pad_token_id), next_tok)
            for i in range(B):
                if not finished[i]:
                    tokens[i].append(int(next_tok[i]))
                    logps[i].append(float(next_logp[i]))
                    if on_token is not None:
                        on_token(first_row + i, tokens[i][-1])
            hit_stop = torch.isin(next_tok, stop_ids) & ~finished
            for i in torch.nonzero(hit_stop).flatten().tolist():
                stopped[i] = True
            finished = finished | hit_stop
            if bool(finished.all()):
                break
            attn = torch.cat([attn, (~finished).long()[:, None]], dim=1)
            step_ids = next_tok[:, None]
            step_pos = step_pos[:, -1:] + 1
        if was_training:
            model.train()
        if self.prefix_cache_tokens and past is not None:
            self._keep(prompts, tokens, hits, past, attn)
        return [Completion(tokens[i], logps[i], "stop" if stopped[i] else "length") for i in range(B)]

    @torch.no_grad()
    def _share_common_prefix(self, prompts: Sequence[Sequence[int]], min_tokens: int = 32) -> None:
        """Prefill the rows' longest common prefix once and cache it, so no row prefills it again.

        The first turn of every task starts with the same system prompt and tool
        schemas (~400 tokens for the finance environment), and the rows of a
        group are identical: without this each row would prefill them itself.
        """
        if len(prompts) < 2:
            return
        first, n = prompts[0], min(len(p) for p in prompts) - 1  # leave each row >= 1 token to feed
        for p in prompts[1:]:
            i = 0
            while i < n and p[i] == first[i]:
                i += 1
            n = i
        if n < min_tokens:
            return
        hits = [self._lookup(p) for p in prompts]
        if all(h is not None and len(h[0]) >= n for h in hits):
            return  # already covered
        model = self.model
        was_training = model.training
        model.eval()
        ids = torch.tensor([list(first[:n])], dtype=torch.long, device=self.device)
        past = _new_cache()
        self._forward(ids, torch.ones_like(ids), torch.arange(n, device=self.device)[None], past)
        if was_training:
            model.train()
        kv = [(layer.keys[0].clone(), layer.values[0].clone()) for layer in past.layers]
        self._store(tuple(first[:n]), kv)
        self._shared.add(tuple(first[:n]))
        self.stats["shared_prefix_tokens"] += n

    def _assemble_cache(self, hits, C: int, device) -> DynamicCache:
        """Left-pad each row's cached keys/values to C columns and stack them into one batch cache."""
        n_layers = len(next(h for h in hits if h)[1])
        cache = _new_cache()
        for layer in range(n_layers):
            ref_k = next(h for h in hits if h)[1][layer][0]  # [H, c, D]
            H, D = ref_k.shape[0], ref_k.shape[2]
            ks = torch.zeros((len(hits), H, C, D), dtype=ref_k.dtype, device=device)
            vs = torch.zeros_like(ks)
            for i, h in enumerate(hits):
                if h:
                    k, v = h[1][layer]
                    ks[i, :, C - k.shape[1] :] = k
                    vs[i, :, C - v.shape[1] :] = v
            cache.update(ks, vs, layer)
        return cache

    def _keep(self, prompts, tokens, hits, past, attn) -> None:
        """Store each row's keys/values for the tokens it fed (prompt + all sampled but the last)."""
        L = past.get_seq_length()
        valid = attn[:, :L].bool()  # [B, L]
        for i, (p, toks) in enumerate(zip(prompts, tokens)):
            key = tuple(p) + tuple(toks[:-1])
            if int(valid[i].sum()) != len(key) or not toks:
                continue  # layout not as expected: do not cache rather than risk a wrong entry
            kv = [(layer.keys[i][:, valid[i]].clone(), layer.values[i][:, valid[i]].clone()) for layer in past.layers]
            if hits[i] and hits[i][0] not in self._shared:
                self._cache.pop(hits[i][0], None)  # superseded by the longer entry
            self._store(key, kv)

    @staticmethod
    def _sample(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw one token per row; return (token [B], logprob [B] under softmax(logits/T))."""
        if params.temperature <= 0:
            logp = torch.log_softmax(logits, dim=-1)
            tok = logp.argmax(dim=-1)
            return tok, logp.gather(-1, tok[:, None]).squeeze(-1)
        logp = torch.log_softmax(logits / params.temperature, dim=-1)  # [B, V]
        probs = logp.exp()
        if params.top_p < 1.0:
            sorted_p, sorted_idx = probs.sort(dim=-1, descending=True)
            cum = sorted_p.cumsum(dim=-1)
            keep_sorted = (cum - sorted_p) < params.top_p  # always keeps the top token
            keep = torch.zeros_like(keep_sorted).scatter(-1, sorted_idx, keep_sorted)
            probs = torch.where(keep, probs, torch.zeros_like(probs))
        tok = _draw(probs, gen)
        return tok, logp.gather(-1, tok[:, None]).squeeze(-1)


def _draw(probs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One token per row from (unnormalised) ``probs`` [B, V] by inverse transform: one uniform per row.

    Why not ``torch.multinomial``: on the CPU it draws an exponential variate
    for every vocabulary entry (49k per row for the bundled model), 13.5 ms of
    a 118 ms decode step at batch 16 (measured); a cumulative sum and a binary
    search are ~1 ms. Exact: token i is drawn iff u falls in (cdf[i-1], cdf[i]],
    an interval of width probs[i]; zero-probability tokens (top-p cut) have
    empty intervals and ``right=True`` steps over them.
    """
    cdf = probs.float().cumsum(dim=-1)  # [B, V]
    u = torch.rand(probs.shape[0], generator=gen).to(probs.device) * cdf[:, -1]  # [B] in [0, total)
    tok = torch.searchsorted(cdf, u[:, None], right=True).squeeze(-1)
    return tok.clamp_(max=probs.shape[-1] - 1)
