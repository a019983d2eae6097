"""RMSNorm modules through the fused kernel: same outputs and gradients, only where the formula matches."""

from __future__ import annotations

import pytest
import torch

from agentrft.models.rms_norm import use_fused_rms_norm, uses_fused_rms_norm


@pytest.fixture()
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


class GemmaLikeRMSNorm(torch.nn.Module):
    """Another formula (scale by 1 + weight): must be left alone."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(dim))
        self.eps = 1e-6

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (1 + self.weight)


def test_fused_norms_give_the_same_outputs_and_gradients(tiny_llama):
    torch.manual_seed(0)
    for m in tiny_llama.modules():  # non-trivial norm weights, so a wrong formula would show
        if type(m).__name__.endswith("RMSNorm"):
            m.weight.data.uniform_(0.5, 1.5)
    ids = torch.randint(3, 100, (2, 9))

    def run():
        tiny_llama.zero_grad()
        logits = tiny_llama(input_ids=ids).logits
        logits.square().mean().backward()
        return logits.detach(), [p.grad.clone() for p in tiny_llama.parameters()]

    ref_logits, ref_grads = run()
    n_norms = sum(type(m).__name__.endswith("RMSNorm") for m in tiny_llama.modules())
    assert use_fused_rms_norm(tiny_llama) == n_norms > 0 and uses_fused_rms_norm(tiny_llama)
    assert all(isinstance(m, type(m).__mro__[1]) for m in tiny_llama.modules() if "Fused" in type(m).__name__)
    logits, grads = run()
    assert torch.allclose(logits, ref_logits, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads, ref_grads))
    keys = set(tiny_llama.state_dict())
    assert use_fused_rms_norm(tiny_llama, enabled=False) == n_norms and not uses_fused_rms_norm(tiny_llama)
    assert set(tiny_llama.state_dict()) == keys


def test_a_norm_with_another_formula_is_left_alone():
    model = torch.nn.Sequential(GemmaLikeRMSNorm(8))
    assert use_fused_rms_norm(model) == 0 and type(model[0]) is GemmaLikeRMSNorm
