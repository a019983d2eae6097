"""A sampling-only forward pass for Llama-family models: adapters folded in, projections fused.

Why: at the batch sizes the sampler runs on a CPU (16-32 rows, one new token
per row per step) a decode step is hundreds of small operations, and the
transformers + peft forward multiplies them: every LoRA-wrapped linear is a
base matmul plus two rank-r matmuls, a scale and an add, and q/k/v and
gate/up are separate matmuls over the same input. This module keeps, per
layer, one ``[q; k; v]`` weight and one ``[gate; up]`` weight with every
active adapter's contribution already added, so a layer is four matmuls.

What it reads from the model: the *effective* weight of each projection, found
by probing the module (``W_eff^T = m(I) - m(0)``, bias ``m(0)``). That is exact
for any module that is affine in its input -- a plain ``nn.Linear``, a peft
LoRA layer (merged or not, any number of active adapters), DoRA -- without
depending on adapter internals. The model's own parameters are never modified
(merging into them and un-merging later is not bit-exact).

Numerics: the same float32 operations in a different order, so logits agree
with the model's forward to ~1e-5 (tested); the trainer recomputes the
log-probabilities it trains on with the model itself.

Scope: :func:`supports` accepts the Llama-shaped architectures listed in
``_ARCHITECTURES`` with SiLU MLPs and default-type attention; anything else
(and any model with an unexpected module layout) keeps the transformers forward.
The weights are rebuilt whenever a parameter changes (the sampler's weights
version) and dropped by :meth:`HFSampler.release`.

Shapes: B rows, S new tokens, L cached + new columns, Hq/Hk query/KV heads,
G = Hq / Hk, D head dim, E hidden size, F MLP width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from agentrft.models.onednn import OneDNNLinear
from agentrft.models.onednn import linear as onednn_linear

__all__ = ["FusedDecoder", "supports"]

_ARCHITECTURES = {"llama", "qwen2"}
"""``config.model_type`` values whose decoder layer is: RMSNorm, attention over q/k/v/o projections with RoPE,
residual, RMSNorm, SiLU-gated MLP over gate/up/down, residual -- exactly what :meth:`FusedDecoder.forward` does."""


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports(model) -> bool:
    """Whether :class:`FusedDecoder` computes exactly what ``model``'s own forward computes."""
    base = _base(model)
    cfg = getattr(base, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in _ARCHITECTURES:
        return False
    if getattr(cfg, "hidden_act", None) != "silu" or getattr(cfg, "use_sliding_window", False):
        return False
    inner = getattr(base, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or not isinstance(base.get_input_embeddings(), torch.nn.Embedding):
        return False
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return False
    for layer in layers:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if attn is None or mlp is None or not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
            return False
        if not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
            return False
    return True


@torch.no_grad()
def _effective(module: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight [out, in], bias [out] or None) of an affine module, as its forward applies them."""
    if type(module) in (torch.nn.Linear, OneDNNLinear):
        return module.weight.detach(), None if module.bias is None else module.bias.detach()
    ref = next(p for p in module.parameters())
    n_in = module.in_features if hasattr(module, "in_features") else module.base_layer.in_features
    eye = torch.eye(n_in, dtype=ref.dtype, device=ref.device)
    zero = module(torch.zeros(1, n_in, dtype=ref.dtype, device=ref.device))[0]
    weight = (module(eye) - zero).T.contiguous()
    return weight, (zero if bool(zero.any()) else None)


def _cat_bias(weights_and_biases) -> torch.Tensor | None:
    if all(b is None for _, b in weights_and_biases):
        return None
    return torch.cat([b if b is not None else w.new_zeros(w.shape[0]) for w, b in weights_and_biases])


@dataclass
class _Layer:
    ln1: torch.Tensor
    ln2: torch.Tensor
    w_qkv: torch.Tensor  # [(Hq + 2 Hk) D, E]
    b_qkv: torch.Tensor | None
    w_o: torch.Tensor
    b_o: torch.Tensor | None
    w_gu: torch.Tensor  # [2 F, E]
    b_gu: torch.Tensor | None
    w_down: torch.Tensor
    b_down: torch.Tensor | None


class FusedDecoder:
    """The model's next-token logits with fused, adapter-folded weights (see the module docstring)."""

    def __init__(self, model, onednn: bool = False) -> None:
        """``onednn``: run the products through oneDNN (:mod:`agentrft.models.onednn`) instead of ``F.linear``."""
        if not supports(model):
            raise ValueError(f"FusedDecoder does not support {type(_base(model)).__name__}")
        was_training = model.training
        model.eval()  # adapter dropout off while probing
        base = _base(model)
        cfg, inner = base.config, base.model
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        self.scale = self.head_dim**-0.5
        self.linear = onednn_linear if onednn else F.linear
        self.rotary = inner.rotary_emb
        self.embed = base.get_input_embeddings().weight.detach()
        self.norm = inner.norm.weight.detach()
        self.lm_head, self.lm_bias = _effective(base.get_output_embeddings())
        self.layers: list[_Layer] = []
        for layer in inner.layers:
            a, m = layer.self_attn, layer.mlp
            qkv = [_effective(a.q_proj), _effective(a.k_proj), _effective(a.v_proj)]
            gu = [_effective(m.gate_proj), _effective(m.up_proj)]
            o, down = _effective(a.o_proj), _effective(m.down_proj)
            self.layers.append(_Layer(
                ln1=layer.input_layernorm.weight.detach(), ln2=layer.post_attention_layernorm.weight.detach(),
                w_qkv=torch.cat([w for w, _ in qkv]), b_qkv=_cat_bias(qkv), w_o=o[0], b_o=o[1],
                w_gu=torch.cat([w for w, _ in gu]), b_gu=_cat_bias(gu), w_down=down[0], b_down=down[1]))
        if was_training:
            model.train()

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                past) -> torch.Tensor:
        """Logits [B, V] of the last position; appends the new keys/values to ``past`` (a ``DynamicCache``).

        ``attention_mask`` [B, L]: 1 for every cache column (cached and new) a row may attend to, with the
        S new tokens in its last S columns; ``position_ids`` [B, S] are explicit (rows may have holes).
        """
        B, S = input_ids.shape
        Hq, Hk, D = self.n_heads, self.n_kv, self.head_dim
        x = F.embedding(input_ids, self.embed)  # [B, S, E]
        cos, sin = self.rotary(x, position_ids)  # [B, S, D]
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]
        L = attention_mask.shape[1]
        # a plain causal prefill (no cache, no padding): SDPA's causal kernel skips the masked half
        plain_causal = S > 1 and S == L and bool(attention_mask.all())
        bias = None
        if not plain_causal:
            allowed = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, L]
            if S > 1:  # causal within the new tokens; cached columns are all in the past
                allowed = allowed & torch.ones(S, L, dtype=torch.bool, device=x.device).tril(L - S)
            # the dtype's minimum, not -inf: a padding query that may attend to nothing gets a finite (unused)
            # output instead of NaN, and NaN keys/values would poison every row through 0 * NaN
            bias = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill_(~allowed,
                                                                                            torch.finfo(x.dtype).min)
        half, linear = D // 2, self.linear
        for i, lw in enumerate(self.layers):
            h = F.rms_norm(x, (x.shape[-1],), lw.ln1, self.eps)
            qkv = linear(h, lw.w_qkv, lw.b_qkv).view(B, S, Hq + 2 * Hk, D)
            qk = qkv[:, :, : Hq + Hk]
            rot = torch.cat((-qk[..., half:], qk[..., :half]), dim=-1)
            qk = qk * cos + rot * sin
            k, v = past.update(qk[:, :, Hq:].transpose(1, 2), qkv[:, :, Hq + Hk :].transpose(1, 2), i)  # [B, Hk, L, D]
            if S == 1:  # grouped-query attention on the KV heads: [B, Hk, G, D] queries, keys/values not repeated
                q = qk[:, 0, :Hq].reshape(B, Hk, Hq // Hk, D)
                # SDPA, not matmul-softmax-matmul: as fast at batch 16, 2.3x faster at batch 32 x 1,500 columns
                attn = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale).reshape(B, 1, Hq * D)
            else:
                q = qk[:, :, :Hq].transpose(1, 2)  # [B, Hq, S, D]
                attn = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale, enable_gqa=True,
                                                      is_causal=plain_causal)
                attn = attn.transpose(1, 2).reshape(B, S, Hq * D)
            x = x + linear(attn, lw.w_o, lw.b_o)
            h = F.rms_norm(x, (x.shape[-1],), lw.ln2, self.eps)
            gu = linear(h, lw.w_gu, lw.b_gu)
            f = gu.shape[-1] // 2
            x = x + linear(F.silu(gu[..., :f]) * gu[..., f:], lw.w_down, lw.b_down)
        last = F.rms_norm(x[:, -1], (x.shape[-1],), self.norm, self.eps)
        return linear(last, self.lm_head, self.lm_bias)
