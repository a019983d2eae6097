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

Shapes: B = number of prompts, P = longest prompt, T = new tokens so far.
"""

from __future__ import annotations

from typing import Sequence

import torch

from agentrft.rollout.sampler import Completion, SamplingParams


class HFSampler:
    """Batched sampling from a local Hugging Face causal LM (CPU fp32 or GPU)."""

    def __init__(self, model, pad_token_id: int, max_batch_size: int = 16, max_context: int | None = None):
        self.model = model
        self.pad_token_id = int(pad_token_id)
        self.max_batch_size = max_batch_size
        self.max_context = max_context or int(getattr(model.config, "max_position_embeddings", 8192))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Completion]:
        out: list[Completion] = []
        gen = torch.Generator(device="cpu")
        if params.seed is not None:
            gen.manual_seed(int(params.seed))
        else:
            gen.seed()
        for start in range(0, len(prompts), self.max_batch_size):
            chunk = prompts[start : start + self.max_batch_size]
            out.extend(self._generate_batch(chunk, params, gen))
        return out

    @torch.no_grad()
    def _generate_batch(self, prompts: Sequence[Sequence[int]], params: SamplingParams, gen: torch.Generator) -> list[Completion]:
        model, device = self.model, self.device
        was_training = model.training
        model.eval()
        B = len(prompts)
        P = max(len(p) for p in prompts)
        if P == 0:
            raise ValueError("empty prompt")
        max_new = max(0, min(params.max_new_tokens, self.max_context - P))
        # Left padding so every row's next token sits at the last position.
        input_ids = torch.full((B, P), self.pad_token_id, dtype=torch.long)
        attn = torch.zeros((B, P), dtype=torch.long)
        for i, p in enumerate(prompts):
            if len(p):
                input_ids[i, P - len(p) :] = torch.tensor(list(p), dtype=torch.long)
                attn[i, P - len(p) :] = 1
        input_ids, attn = input_ids.to(device), attn.to(device)
        position_ids = (attn.cumsum(-1) - 1).clamp(min=0)  # [B, P]

        stop_ids = torch.tensor(list(params.stop_token_ids) or [-1], device=device)
        tokens: list[list[int]] = [[] for _ in range(B)]
        logps: list[list[float]] = [[] for _ in range(B)]
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        stopped = [False] * B

        past = None
        step_ids, step_pos = input_ids, position_ids
        for _ in range(max_new):
            outputs = model(input_ids=step_ids, attention_mask=attn, position_ids=step_pos, past_key_values=past, use_cache=True)
            past = outputs.past_key_values
            logits = outputs.logits[:, -1, :].float()  # [B, V]
            next_tok, next_logp = self._sample(logits, params, gen)  # [B], [B]
            next_tok = torch.where(finished, torch.full_like(next_tok, self.pad_token_id), next_tok)
            for i in range(B):
                if not finished[i]:
                    tokens[i].append(int(next_tok[i]))
                    logps[i].append(float(next_logp[i]))
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
        return [Completion(tokens[i], logps[i], "stop" if stopped[i] else "length") for i in range(B)]

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
        tok = torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(logits.device)
        return tok, logp.gather(-1, tok[:, None]).squeeze(-1)
