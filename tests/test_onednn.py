"""Linear layers through oneDNN: same values and gradients as F.linear, swappable in and out of a model."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from agentrft.config import load_config
from agentrft.errors import ConfigError
from agentrft.models import onednn
from agentrft.models.onednn import OneDNNLinear, choose, linear, use_onednn, uses_onednn
from agentrft.rollout.hf_sampler import HFSampler
from agentrft.rollout.sampler import SamplingParams

pytestmark = pytest.mark.skipif(onednn.onednn_op() is None, reason="this PyTorch build has no oneDNN")


def _llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0))


@pytest.mark.parametrize("with_bias", [True, False])
def test_values_and_all_three_gradients_match_f_linear(with_bias):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 24, generator=gen)[:, :, ::2]  # 3-D and non-contiguous: [3, 5, 12]
    w = torch.randn(7, 12, generator=gen)
    b = torch.randn(7, generator=gen) if with_bias else None
    grads = []
    for fn in (F.linear, linear):
        xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
        bs = b.clone().requires_grad_() if with_bias else None
        y = fn(xs, ws, bs)
        (y.sin() * torch.arange(7.0)).sum().backward()  # a non-uniform upstream gradient
        grads.append((y.detach(), xs.grad, ws.grad, bs.grad if with_bias else None))
    (y0, gx0, gw0, gb0), (y1, gx1, gw1, gb1) = grads
    assert y1.shape == (3, 5, 7)
    for a, r in ((y1, y0), (gx1, gx0), (gw1, gw0)) + (((gb1, gb0),) if with_bias else ()):
        assert torch.allclose(a, r, atol=1e-5, rtol=1e-5)


def test_without_grad_and_for_other_dtypes_it_is_plain_f_linear():
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    with torch.no_grad():
        assert torch.allclose(linear(x, w), F.linear(x, w), atol=1e-5)
    xb, wb = x.bfloat16(), w.bfloat16()
    assert torch.equal(linear(xb, wb), F.linear(xb, wb))
    assert linear(torch.zeros(0, 8), w).shape == (0, 3)


def test_a_model_switches_both_ways_and_keeps_its_state_dict():
    model = _llama()
    keys = list(model.state_dict())
    ids = torch.randint(3, 120, (2, 9), generator=torch.Generator().manual_seed(1))
    ref = model(ids).logits
    n = use_onednn(model)
    assert n == 2 * 7 + 1 and uses_onednn(model)  # 7 projections per layer and the head
    assert list(model.state_dict()) == keys
    assert torch.allclose(model(ids).logits, ref, atol=1e-4)
    assert use_onednn(model) == 0  # idempotent
    assert use_onednn(model, enabled=False) == n and not uses_onednn(model)
    assert all(type(m) is not OneDNNLinear for m in model.modules())


def test_lora_gradients_match_and_the_model_copies_and_pickles():
    grads = []
    for dnn in (False, True):
        torch.manual_seed(1)
        lm = get_peft_model(_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
        use_onednn(lm, enabled=dnn)
        ids = torch.randint(3, 120, (2, 9), generator=torch.Generator().manual_seed(2))
        lm(ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in lm.named_parameters() if p.requires_grad})
        if dnn:
            assert any(isinstance(m, OneDNNLinear) for m in lm.modules())
            twin = copy.deepcopy(lm)
            assert uses_onednn(twin)
            buf = io.BytesIO()
            torch.save(lm, buf)
            buf.seek(0)
            assert uses_onednn(torch.load(buf, weights_only=False))
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4), name


def test_choose_follows_the_setting(monkeypatch):
    assert choose("mkl") is False
    assert choose("onednn") is True
    assert choose("auto", "cpu", torch.bfloat16) is False
    assert choose("onednn", "cuda") is False  # GPU: never
    monkeypatch.setattr(onednn, "onednn_op", lambda: None)
    onednn._verdict.cache_clear()
    try:
        assert choose("auto") is False
        with pytest.raises(ConfigError, match="cpu_matmul: onednn is not usable here"):
            choose("onednn")
    finally:
        monkeypatch.undo()
        onednn._verdict.cache_clear()


def test_auto_takes_onednn_only_when_it_is_clearly_faster():
    assert onednn.clearly_faster(3.0, 6.0)  # AVX-512 EPYC: about 2x
    assert not onednn.clearly_faster(5.9, 6.3)  # within the noise of one process to the next: keep MKL
    assert not onednn.clearly_faster(6.3, 5.9)


def test_config_takes_the_setting_and_rejects_others():
    base = {"method": "rft", "data": {"env": "toy"}}
    assert load_config({**base, "training": {"cpu_matmul": "mkl"}}).training.cpu_matmul == "mkl"
    assert load_config(base).training.cpu_matmul == "auto"
    with pytest.raises(ConfigError, match="cpu_matmul"):
        load_config({**base, "training": {"cpu_matmul": "blas"}})


def test_sampling_through_onednn_gives_the_same_tokens():
    model = _llama().eval()
    prompts = [[5, 6, 7, 8], [9, 10]]
    out = {}
    for setting in ("onednn", "mkl"):
        s = HFSampler(model, pad_token_id=0, fused=True, cpu_matmul=setting)
        assert s.onednn is (setting == "onednn")
        out[setting] = s.generate(prompts, SamplingParams(temperature=0.9, max_new_tokens=6, seed=3))
    for a, b in zip(out["onednn"], out["mkl"]):
        assert a.token_ids == b.token_ids
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4)
