"""The fused sampling forward: same logits as the model's own forward, adapters included, weights never touched."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from agentrft.rollout.fused_decoder import FusedDecoder, supports
from agentrft.rollout.hf_sampler import HFSampler, _new_cache
from agentrft.rollout.sampler import SamplingParams

COMMON = dict(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, pad_token_id=0, eos_token_id=1, bos_token_id=2)


def _llama(**kw):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**{**COMMON, **kw})).eval()


def _qwen2():
    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(**COMMON)).eval()  # q/k/v carry biases


def _lora(model):
    torch.manual_seed(1)
    lm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    with torch.no_grad():  # B starts at zero: give the adapters a real contribution
        for n, p in lm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    return lm.eval()


MODELS = {
    "llama": _llama,
    "llama_biases": lambda: _llama(attention_bias=True, mlp_bias=True),
    "qwen2": _qwen2,
    "llama_lora": lambda: _lora(_llama()),
}


def _compare(model, fused, ids, attn, pos, steps=3):
    """Max |logits difference| over a prefill of ``ids`` (with holes) and ``steps`` decode steps."""
    worst = 0.0
    p_ref, p_fused = _new_cache(), _new_cache()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(steps + 1):
            ref = model(input_ids=ids, attention_mask=attn, position_ids=pos, past_key_values=p_ref,
                        use_cache=True).logits[:, -1]
            out = fused.forward(ids, attn, pos, p_fused)
            worst = max(worst, float((ref - out).abs().max()))
            ids = torch.randint(3, 120, (ids.shape[0], 1), generator=gen)
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], 1)
            pos = pos[:, -1:] + 1
    return worst


@pytest.mark.parametrize("name", list(MODELS))
def test_logits_match_the_models_forward_with_padding_holes(name):
    model = MODELS[name]()
    assert supports(model)
    ids = torch.randint(3, 120, (3, 9), generator=torch.Generator().manual_seed(2))
    attn = torch.ones(3, 9, dtype=torch.long)
    attn[0, :4] = 0  # left padding
    attn[1, 2:5] = 0  # a hole between a cached prefix and a new suffix
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    assert _compare(model, FusedDecoder(model), ids, attn, pos) < 1e-4


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_a_plain_causal_prefill_matches_too(name):
    """No cache and no padding takes SDPA's causal kernel instead of a mask."""
    model = MODELS[name]()
    ids = torch.randint(3, 120, (2, 11), generator=torch.Generator().manual_seed(4))
    assert _compare(model, FusedDecoder(model), ids, torch.ones_like(ids), torch.arange(11).expand(2, 11)) < 1e-4


def test_adapters_are_folded_in_and_the_model_is_not_modified():
    model = MODELS["llama_lora"]()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fused = FusedDecoder(model)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    ids = torch.randint(3, 120, (2, 6), generator=torch.Generator().manual_seed(3))
    attn, pos = torch.ones_like(ids), torch.arange(6).expand(2, 6)
    with model.disable_adapter():  # the adapters matter, so a decoder that ignored them would fail above
        assert _compare(model, fused, ids, attn, pos, steps=0) > 1e-2
    assert not model.training  # probing left the mode as it was


def test_unsupported_architectures_keep_the_models_forward():
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=120, n_embd=32, n_layer=2, n_head=4)).eval()
    assert not supports(gpt2)
    with pytest.raises(ValueError, match="does not support"):
        FusedDecoder(gpt2)
    with pytest.raises(ValueError, match="fused decoding does not support"):
        HFSampler(gpt2, pad_token_id=0, fused=True)
    sampler = HFSampler(gpt2, pad_token_id=0)
    assert sampler.fused is False
    out = sampler.generate([[5, 6, 7]], SamplingParams(temperature=0, max_new_tokens=4))
    assert len(out[0].token_ids) == 4


def test_fused_and_plain_sampling_agree_over_multi_turn_prefix_reuse():
    """Same tokens and logprobs with the prefix cache in play: a second turn extends the first."""
    model = MODELS["llama_lora"]()
    prompts = [[5, 6, 7, 8, 9, 10] * 6 + [11], [5, 6, 7, 8, 9, 10] * 6 + [12, 13]]
    results = []
    for fused in (True, False):
        s = HFSampler(model, pad_token_id=0, fused=fused)
        first = s.generate(prompts, SamplingParams(temperature=0, max_new_tokens=5))
        second = s.generate([p + c.token_ids + [14, 15] for p, c in zip(prompts, first)],
                            SamplingParams(temperature=0.8, max_new_tokens=5, seed=7))
        assert s.stats["cached_tokens"] > 0 and s.stats["shared_prefix_tokens"] > 0
        results.append((first, second))
    (f1, f2), (p1, p2) = results
    for a, b in zip(f1 + f2, p1 + p2):
        assert a.token_ids == b.token_ids
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4)


def test_changed_weights_are_sampled_never_the_stale_fused_copy():
    model = MODELS["llama"]()
    fused, plain = HFSampler(model, pad_token_id=0, fused=True), HFSampler(model, pad_token_id=0, fused=False)
    params = SamplingParams(temperature=0, max_new_tokens=6)
    before = fused.generate([[5, 6, 7]], params)[0]
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(-3.0)  # an in-place update, like an optimizer step
    after = fused.generate([[5, 6, 7]], params)[0]
    ref = plain.generate([[5, 6, 7]], params)[0]
    assert after.token_ids == ref.token_ids
    assert torch.allclose(torch.tensor(after.logprobs), torch.tensor(ref.logprobs), atol=1e-4)
    assert torch.tensor(after.logprobs).sub(torch.tensor(before.logprobs)).abs().max() > 1e-3


def test_release_drops_the_fused_weights_and_the_prefix_cache():
    s = HFSampler(MODELS["llama"](), pad_token_id=0, fused=True)
    s.generate([[5, 6, 7], [5, 6, 8]], SamplingParams(temperature=0, max_new_tokens=3))
    assert s._decoder is not None and s._cache
    s.release()
    assert s._decoder is None and not s._cache


def test_only_float32_models_are_fused_by_default():
    assert HFSampler(MODELS["llama"](), pad_token_id=0).fused is True
    assert HFSampler(MODELS["llama"]().to(torch.bfloat16), pad_token_id=0).fused is False


def test_after_a_fused_adamw_step_the_sampler_draws_from_the_new_weights():
    """Fused AdamW writes without bumping version counters: optimizer_step must drop the fused copy itself."""
    from types import SimpleNamespace

    from agentrft.train.optim import optimizer_step

    model = MODELS["llama"]()
    sampler = HFSampler(model, pad_token_id=0, fused=True)
    params = SamplingParams(temperature=0, max_new_tokens=6)
    before = sampler.generate([[5, 6, 7]], params)[0]
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)
    versions = [p._version for p in model.parameters()]
    model(torch.tensor([[5, 6, 7, 8]]), labels=torch.tensor([[5, 6, 7, 8]])).loss.backward()
    policy = SimpleNamespace(trainable_parameters=lambda: list(model.parameters()))
    ctx = SimpleNamespace(policy=policy, optimizer=opt, scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
                          sampler=sampler, cfg=SimpleNamespace(optim=SimpleNamespace(max_grad_norm=1.0)))
    assert optimizer_step(ctx)[0]
    assert [p._version for p in model.parameters()] == versions  # why the explicit release is needed
    after = sampler.generate([[5, 6, 7]], params)[0]
    ref = HFSampler(model, pad_token_id=0, fused=False).generate([[5, 6, 7]], params)[0]
    assert torch.allclose(torch.tensor(after.logprobs), torch.tensor(ref.logprobs), atol=1e-4)
    assert not torch.allclose(torch.tensor(after.logprobs), torch.tensor(before.logprobs), atol=1e-3)
