"""Per-token log-probabilities of a causal LM, aligned with its input ids.

``token_logprobs(model, input_ids [B, T], attention_mask [B, T]) -> [B, T]``
where ``out[b, t] = log p(input_ids[b, t] | input_ids[b, :t])`` for ``t >= 1``;
position 0 (nothing to condition on) and padding positions get 0. Keeping the
output aligned with ``input_ids`` (rather than shifted by one, as
``logits[:, :-1]`` is) lets it be multiplied directly with the
``loss_mask [B, T]`` and ``old_logprobs [B, T]`` of
:class:`agentrft.algo.batch.TrainBatch`, whose positions are token positions.

Memory and time: the logits ``[B, T, V]`` are the largest tensor of a step. A
naive ``log_softmax(logits).gather(...)`` materialises (and saves for backward)
a second ``[B, T, V]`` tensor, and autograd's ``logsumexp`` + ``gather`` make
four or five vocabulary-sized temporaries per chunk between forward and
backward. Here :func:`picked_logprobs` does it in one fused function: its
forward keeps one buffer, the probabilities (the logits themselves are not
kept), and its backward turns that buffer into the gradient in place; the
entropy comes from the same buffer. The sequence is processed in chunks of
``chunk_size`` positions so that buffer stays ``[B * chunk, V]``.

Temperature: the sampler drew tokens from ``softmax(logits / temperature)``;
the ratio against the sampling logprobs is only meaningful if the trainer
scores the same distribution, so ``temperature`` divides the logits here too.

Entropy ``H_t = logsumexp(z) - sum_v softmax(z)_v z_v`` of the next-token
distribution is a diagnostic (collapse detector), computed without gradient.

Works with any HF causal LM: ``model(input_ids=..., attention_mask=...).logits``.

Only the positions a loss reads (``needed``): a trainer uses the logprobs of
sampled tokens only, typically 10-20 % of an agent trajectory (the rest is
prompt and tool output). Given ``needed [B, T]``, the decoder's hidden states
are computed as usual but the LM head (``V x H``, the largest matmul of a small
model) and the softmax run only on the needed rows: measured on the bundled
135M model with LoRA, a forward+backward over 4 x 900 tokens of which 10 %
are trained drops from 25 s to 15 s on 2 CPU cores. The shortcut needs a
model whose logits are exactly ``lm_head(decoder(x))`` (no soft-capping or
logit scaling), so it is used for the architectures in
:data:`PLAIN_HEAD_MODEL_TYPES` and everything else takes the full path;
both give the same numbers (tested).

A shared prefix (:class:`SharedPrefix`): every trajectory of a step starts with
the same system prompt and tool schemas (about 390 of ~1,100 tokens on the
finance environment), and the rollouts of a group share their task too (a
child prefix on top of the common one; :class:`PrefixRows` serves rows of
several groups in one batch). The decoder runs on those tokens once per step
instead of once per trajectory:
their keys/values become leaves that each micro-batch attends to, their
gradients accumulate there, and :meth:`SharedPrefix.backward` pushes the sum
through the prefix once after the last micro-batch. The loss is a sum over
micro-batches, so the gradients are those of the unshared computation
(tested); only the prefix's forward and backward are done once, not B times.
"""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_CHUNK_SIZE = 512

def _cache_keyword() -> str:
    """The keyword a transformers model's ``forward`` takes its KV cache by (and the output field it returns it
    in): ``cache`` since transformers renamed ``past_key_values``, whose use now warns (FutureWarning) and goes
    in 5.40; ``past_key_values`` in the 5.x releases before the rename."""
    import dataclasses

    from transformers.modeling_outputs import BaseModelOutputWithPast

    return "cache" if "cache" in {f.name for f in dataclasses.fields(BaseModelOutputWithPast)} else "past_key_values"


CACHE_KEYWORD = _cache_keyword()

PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "olmo2", "smollm3"})
"""Architectures whose logits are ``lm_head(last_hidden_state)`` with nothing applied after the head."""


class _PickedLogprob(torch.autograd.Function):
    """``log softmax(z / t)[target]`` per row of ``z`` [N, V], and (without gradient) the rows' entropy.

    One fused pass instead of autograd's ``logsumexp`` + ``gather`` (+ ``softmax`` for the entropy): the
    forward makes one vocabulary-sized buffer, the probabilities, and keeps it; the backward turns that
    buffer into the gradient in place (``g * (onehot - p) / t``). Autograd's version allocates four or
    five [N, V] temporaries per chunk (logsumexp's, gather's zero-filled scatter, their sum, the entropy's
    softmax); on the bundled model that was ~70 ms per 180 positions, now ~12 ms.
    """

    @staticmethod
    def forward(ctx, z: Tensor, targets: Tensor, temperature: float, with_entropy: bool):  # z [N, V], targets [N]
        scaled = z / temperature if temperature != 1.0 else z
        top = scaled.amax(dim=-1, keepdim=True)  # [N, 1]
        probs = torch.sub(scaled, top).exp_()  # [N, V], the one new buffer
        total = probs.sum(dim=-1, keepdim=True)  # [N, 1]
        lse = top + total.log()  # [N, 1]
        probs.div_(total)
        logp = (scaled.gather(-1, targets[:, None]) - lse).squeeze(-1)  # [N]
        if with_entropy:  # H = lse - sum_v p_v z_v, the dot products as one batched product (no [N, V] temporary)
            entropy = lse.squeeze(-1) - torch.bmm(probs.unsqueeze(1), scaled.unsqueeze(2)).view(-1)
        else:
            entropy = logp.new_empty((0,))
        ctx.mark_non_differentiable(entropy)
        ctx.save_for_backward(probs, targets)
        ctx.temperature = temperature
        ctx.spent = False
        return logp, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp: Tensor, _grad_entropy: Tensor):
        if ctx.spent:
            raise RuntimeError("token logprobs: this graph was already backpropagated (its buffer is reused)")
        ctx.spent = True
        probs, targets = ctx.saved_tensors
        grad = probs.mul_(grad_logp[:, None].neg())  # d logp / d z = onehot - p, in place
        grad.scatter_add_(-1, targets[:, None], grad_logp[:, None].to(grad.dtype))
        if ctx.temperature != 1.0:
            grad.div_(ctx.temperature)
        return grad, None, None, None


def picked_logprobs(z: Tensor, targets: Tensor, *, temperature: float = 1.0,
                    with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
    """``log softmax(z / temperature)[targets]`` [N] for float32 logits ``z`` [N, V], and the entropy [N] if asked."""
    logp, entropy = _PickedLogprob.apply(z, targets, float(temperature), with_entropy)
    return logp, (entropy if with_entropy else None)


def logprobs_from_logits(
    logits: Tensor,
    input_ids: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Aligned token logprobs (and optionally entropy) from next-token logits.

    logits: [B, T, V] (position t predicts token t+1); input_ids: [B, T]
    -> (logprobs [B, T] with column 0 = 0, entropy [B, T] with column 0 = 0, or None)
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    b, t, _ = logits.shape
    logprobs = logits.new_zeros((b, t), dtype=torch.float32)  # [B, T]
    entropy = logits.new_zeros((b, t), dtype=torch.float32) if with_entropy else None
    targets = input_ids[:, 1:]  # [B, T-1]
    pieces: list[Tensor] = []
    for s in range(0, t - 1, chunk_size):
        e = min(s + chunk_size, t - 1)
        z = logits[:, s:e].float().reshape(b * (e - s), -1)  # [B*c, V]
        picked, ent = picked_logprobs(z, targets[:, s:e].reshape(-1), temperature=temperature,
                                      with_entropy=entropy is not None)
        pieces.append(picked.view(b, e - s))
        if entropy is not None:
            entropy[:, s + 1 : e + 1] = ent.view(b, e - s)
    if pieces:
        # cat keeps the autograd graph; column 0 stays a constant 0.
        logprobs = torch.cat([logprobs[:, :1], torch.cat(pieces, dim=1)], dim=1)  # [B, T]
    return logprobs, entropy


def common_prefix_length(sequences: list[list[int]]) -> int:
    """Length of the longest prefix all ``sequences`` share."""
    if not sequences:
        return 0
    first, n = sequences[0], min(len(x) for x in sequences)
    for seq in sequences[1:]:
        i = 0
        while i < n and seq[i] == first[i]:
            i += 1
        n = i
    return n


class SharedPrefix:
    """The decoder's keys/values of ``prefix_ids`` computed once, for many micro-batches that start with them.

    ``prefix_ids``: [P] token ids. Gradients flow: each micro-batch's backward
    accumulates into the leaves' ``.grad``; :meth:`backward` then sends them
    through the prefix's own graph, once. ``parent``: a shorter shared prefix
    these ids extend (the system prompt under a group's task prompt): only the
    extension is forwarded, on top of the parent's leaves, and this prefix's
    backward feeds the parent's leaves, so children go back before parents.
    """

    def __init__(self, model: torch.nn.Module, prefix_ids: Tensor, parent: "SharedPrefix | None" = None) -> None:
        from transformers.cache_utils import DynamicCache

        self.length = int(prefix_ids.numel())
        start = parent.length if parent is not None else 0
        if not start < self.length:
            raise ValueError(f"a child prefix ({self.length} tokens) must extend its parent ({start} tokens)")
        ids = prefix_ids[start:].view(1, -1)
        out = model.get_decoder()(
            input_ids=ids, attention_mask=torch.ones((1, self.length), dtype=torch.long, device=ids.device),
            position_ids=torch.arange(start, self.length, device=ids.device).view(1, -1),
            **{CACHE_KEYWORD: parent.cache(1) if parent is not None else DynamicCache()}, use_cache=True)
        self._outputs = [(layer.keys, layer.values) for layer in getattr(out, CACHE_KEYWORD).layers]  # [1, H, P, D]
        self._leaves = [(k.detach().requires_grad_(k.requires_grad), v.detach().requires_grad_(v.requires_grad))
                        for k, v in self._outputs]

    def cache(self, batch_size: int):
        """A fresh cache holding the prefix for ``batch_size`` rows (the rows' grads sum into the leaves)."""
        return PrefixRows([self] * batch_size, self.length).cache(batch_size)

    def backward(self) -> None:
        """Backpropagate the gradients the micro-batches left on the prefix's keys/values through the prefix."""
        outputs, grads = [], []
        for (k, v), (lk, lv) in zip(self._outputs, self._leaves):
            for out, leaf in ((k, lk), (v, lv)):
                if leaf.grad is not None and out.requires_grad:
                    outputs.append(out)
                    grads.append(leaf.grad)
        if outputs:
            torch.autograd.backward(outputs, grad_tensors=grads)
        self._outputs = self._leaves = []  # the graph is spent


class PrefixRows:
    """The first ``length`` tokens of each row's own :class:`SharedPrefix` (rows of several groups in one batch).

    Keys/values at positions below ``length`` depend on those tokens only (causal attention), so a longer
    prefix's leaves cut to ``length`` are exactly the shorter prefix's.
    """

    def __init__(self, prefixes: list[SharedPrefix], length: int) -> None:
        if any(p.length < length for p in prefixes):
            raise ValueError(f"a row's shared prefix is shorter than {length} tokens")
        self.prefixes, self.length = prefixes, length

    def cache(self, batch_size: int):
        from transformers.cache_utils import DynamicCache

        if batch_size != len(self.prefixes):
            raise ValueError(f"{len(self.prefixes)} row prefixes for a batch of {batch_size}")
        cache = DynamicCache()
        n = self.length
        first = self.prefixes[0]
        same = all(p is first for p in self.prefixes)
        for i in range(len(first._leaves)):
            if same:
                k = first._leaves[i][0][:, :, :n].expand(batch_size, -1, -1, -1)
                v = first._leaves[i][1][:, :, :n].expand(batch_size, -1, -1, -1)
            else:
                k = torch.cat([p._leaves[i][0][:, :, :n] for p in self.prefixes])
                v = torch.cat([p._leaves[i][1][:, :, :n] for p in self.prefixes])
            cache.update(k, v, i)
        return cache


def token_logprobs(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    needed: Tensor | None = None,
    prefix: SharedPrefix | PrefixRows | None = None,
) -> Tensor:
    """``log p(input_ids[:, t] | input_ids[:, :t])`` under ``model``; 0 at t=0 and on padding.

    input_ids: [B, T], attention_mask: [B, T] -> [B, T] float32
    needed: optional [B, T] bool/0-1 mask of the positions the caller reads (the
    loss mask); the others may be returned as 0 (they are, on the fast path).
    prefix: the keys/values of ``input_ids[:, :prefix.length]`` (every row starts with those tokens), computed
    once (see :class:`SharedPrefix`); needs ``needed`` with no position at or before ``prefix.length``.
    """
    logprobs, _ = token_logprobs_and_entropy(
        model, input_ids, attention_mask, temperature=temperature, chunk_size=chunk_size, with_entropy=False,
        needed=needed, prefix=prefix,
    )
    return logprobs


def token_logprobs_and_entropy(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    with_entropy: bool = True,
    needed: Tensor | None = None,
    prefix: SharedPrefix | PrefixRows | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Like :func:`token_logprobs`, plus the (detached) entropy of each position's predictive distribution.

    input_ids: [B, T], attention_mask: [B, T] -> (logprobs [B, T], entropy [B, T] or None)
    ``entropy[:, t]`` is the entropy of the distribution that ``input_ids[:, t]`` was drawn from.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if prefix is not None and (needed is None or not has_plain_head(model)):
        raise ValueError("a shared prefix needs the fast path: pass needed=, on a plain-head model")
    if needed is not None and has_plain_head(model):
        return _selected_logprobs(model, input_ids, attention_mask, needed.bool() & attention_mask.bool(),
                                  temperature=temperature, chunk_size=chunk_size, with_entropy=with_entropy,
                                  prefix=prefix)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # [B, T, V]
    logprobs, entropy = logprobs_from_logits(
        logits, input_ids, temperature=temperature, chunk_size=chunk_size, with_entropy=with_entropy
    )
    keep = attention_mask.to(logprobs.dtype)  # [B, T]; padding positions -> 0
    return logprobs * keep, (entropy * keep if entropy is not None else None)


def has_plain_head(model: torch.nn.Module) -> bool:
    """True when ``model``'s logits are exactly its output embedding applied to its decoder's last hidden state."""
    config = getattr(model, "config", None)
    return (getattr(config, "model_type", None) in PLAIN_HEAD_MODEL_TYPES
            and callable(getattr(model, "get_decoder", None)) and callable(getattr(model, "get_output_embeddings", None)))


def _selected_logprobs(
    model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, needed: Tensor, *,
    temperature: float, chunk_size: int, with_entropy: bool, prefix: SharedPrefix | PrefixRows | None = None,
) -> tuple[Tensor, Tensor | None]:
    """The fast path of :func:`token_logprobs_and_entropy`: the LM head only on the ``needed`` [B, T] positions."""
    b, t = input_ids.shape
    needed = needed.clone()
    needed[:, 0] = False  # nothing predicts the first token
    rows, cols = needed.nonzero(as_tuple=True)  # [N], [N]
    p = prefix.length if prefix is not None else 0
    if p:
        if rows.numel() and int(cols.min()) <= p:
            raise ValueError(f"a needed position ({int(cols.min())}) lies inside the shared prefix ({p} tokens)")
        positions = torch.arange(p, t, device=input_ids.device).expand(b, -1)  # [B, T-P]
        hidden = model.get_decoder()(input_ids=input_ids[:, p:], attention_mask=attention_mask,
                                     position_ids=positions, **{CACHE_KEYWORD: prefix.cache(b)},
                                     use_cache=True).last_hidden_state  # [B, T-P, H]: positions P..T-1
    else:
        hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, T, H]
    head = model.get_output_embeddings()
    picked_hidden = hidden[rows, cols - 1 - p]  # [N, H]: position t-1 predicts token t
    targets = input_ids[rows, cols]  # [N]
    values: list[Tensor] = []
    ent_values: list[Tensor] = []
    for s in range(0, rows.numel(), chunk_size):
        z = head(picked_hidden[s : s + chunk_size]).float()  # [c, V]
        picked, ent = picked_logprobs(z, targets[s : s + chunk_size], temperature=temperature,
                                      with_entropy=with_entropy)
        values.append(picked)
        if ent is not None:
            ent_values.append(ent)
    flat = torch.cat(values) if values else hidden.new_zeros((0,), dtype=torch.float32)
    logprobs = hidden.new_zeros((b, t), dtype=torch.float32).index_put((rows, cols), flat)  # [B, T], keeps the graph
    entropy = None
    if with_entropy:
        flat_ent = torch.cat(ent_values) if ent_values else hidden.new_zeros((0,), dtype=torch.float32)
        entropy = hidden.new_zeros((b, t), dtype=torch.float32).index_put((rows, cols), flat_ent)
    return logprobs, entropy
