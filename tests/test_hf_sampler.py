"""The local transformers sampler: KV-cached batched decoding that matches the model exactly."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from agentrft.rollout.hf_sampler import HFSampler
from agentrft.rollout.sampler import SamplingParams

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]


@pytest.fixture(scope="module")
def model():
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def reference_logprobs(model, prompt, completion, temperature=1.0):
    full = torch.tensor([prompt + completion])
    logits = model(full).logits[0, len(prompt) - 1 : -1] / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)


def test_greedy_batch_with_left_padding_matches_generate(model):
    out = HFSampler(model, pad_token_id=0).generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=8))
    for p, c in zip(PROMPTS, out):
        ref = model.generate(torch.tensor([p]), max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert c.token_ids == ref[0, len(p):].tolist()
        assert torch.allclose(torch.tensor(c.logprobs), reference_logprobs(model, p, c.token_ids), atol=1e-4)
        assert c.finish_reason == "length"


def test_sampled_logprobs_are_under_the_tempered_distribution(model):
    out = HFSampler(model, pad_token_id=0).generate(PROMPTS, SamplingParams(temperature=0.7, max_new_tokens=6, seed=1))
    for p, c in zip(PROMPTS, out):
        assert len(c.token_ids) == len(c.logprobs) == 6
        assert torch.allclose(torch.tensor(c.logprobs), reference_logprobs(model, p, c.token_ids, 0.7), atol=1e-4)


def test_seeded_sampling_is_reproducible_and_seeds_differ(model):
    s = HFSampler(model, pad_token_id=0)
    a = s.generate(PROMPTS, SamplingParams(temperature=1.0, max_new_tokens=10, seed=3))
    b = s.generate(PROMPTS, SamplingParams(temperature=1.0, max_new_tokens=10, seed=3))
    c = s.generate(PROMPTS, SamplingParams(temperature=1.0, max_new_tokens=10, seed=4))
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]


def test_stop_token_ends_a_row_and_is_kept(model):
    s = HFSampler(model, pad_token_id=0)
    greedy = s.generate([PROMPTS[0]], SamplingParams(temperature=0, max_new_tokens=8))[0].token_ids
    stop = greedy[2]
    out = s.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=8, stop_token_ids=(stop,)))
    assert out[0].token_ids == greedy[: greedy.index(stop) + 1] and out[0].finish_reason == "stop"


def test_top_p_restricts_to_the_nucleus(model):
    s = HFSampler(model, pad_token_id=0)
    p = PROMPTS[0]
    probs = torch.softmax(model(torch.tensor([p])).logits[0, -1], -1)
    top = int(probs.argmax())
    # with top_p tiny only the most likely token can be drawn, whatever the seed
    firsts = {s.generate([p], SamplingParams(temperature=1.0, top_p=1e-6, max_new_tokens=1, seed=k))[0].token_ids[0]
              for k in range(8)}
    assert firsts == {top}


def test_batches_larger_than_max_batch_size_are_split(model):
    s = HFSampler(model, pad_token_id=0, max_batch_size=2)
    out = s.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=4))
    whole = HFSampler(model, pad_token_id=0).generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=4))
    assert [c.token_ids for c in out] == [c.token_ids for c in whole]


def _second_turn(sampler, params):
    first = sampler.generate(PROMPTS, params)
    return [p + c.token_ids + [20 + i, 21] for i, (p, c) in enumerate(zip(PROMPTS, first))]


def test_prefix_cache_gives_the_same_tokens_as_full_prefill(model):
    params = SamplingParams(temperature=0, max_new_tokens=6)
    cached = HFSampler(model, pad_token_id=0)
    turn2 = _second_turn(cached, params)
    turn2[1] = [30, 31, 32]  # one row with no cached prefix at all
    before = cached.stats["cached_tokens"]
    out = cached.generate(turn2, params)
    assert cached.stats["cached_tokens"] - before == sum(len(p) - 3 for i, p in enumerate(turn2) if i != 1)
    fresh = HFSampler(model, pad_token_id=0, prefix_cache_tokens=0).generate(turn2, params)
    assert [c.token_ids for c in out] == [c.token_ids for c in fresh]
    for a, b in zip(out, fresh):
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4)


def test_prefix_cache_is_dropped_when_weights_change(model):
    import copy

    m = copy.deepcopy(model)
    params = SamplingParams(temperature=0, max_new_tokens=6)
    s = HFSampler(m, pad_token_id=0)
    turn2 = _second_turn(s, params)
    with torch.no_grad():
        m.model.layers[0].mlp.up_proj.weight.mul_(3.0)  # an in-place update, as optimizer.step() does
    before = s.stats["cached_tokens"]
    out = s.generate(turn2, params)
    assert s.stats["cached_tokens"] == before  # nothing reused across the weight change
    fresh = HFSampler(m, pad_token_id=0, prefix_cache_tokens=0).generate(turn2, params)
    assert [c.token_ids for c in out] == [c.token_ids for c in fresh]


def test_rows_with_a_common_prefix_prefill_it_once(model):
    """A shared system prompt (and a group's identical prompts) is prefilled once; tokens do not change."""
    system = list(range(40, 80))  # 40 shared tokens, above the 32-token threshold
    prompts = [system + [3, 4], system + [5], system + [3, 4], system + [6, 7, 8]]
    params = SamplingParams(temperature=0, max_new_tokens=5)
    shared = HFSampler(model, pad_token_id=0)
    out = shared.generate(prompts, params)
    assert shared.stats["shared_prefix_tokens"] == 40
    assert shared.stats["prefill_tokens"] == sum(len(p) - 40 for p in prompts)
    plain = HFSampler(model, pad_token_id=0, prefix_cache_tokens=0)
    ref = plain.generate(prompts, params)
    assert plain.stats["prefill_tokens"] == sum(len(p) for p in prompts)
    assert [c.token_ids for c in out] == [c.token_ids for c in ref]
    for a, b in zip(out, ref):
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4)
    # the next call of the same kind (new tasks, same system prompt) reuses it without prefilling it again
    shared.generate([system + [9], system + [10, 11]], params)
    assert shared.stats["shared_prefix_tokens"] == 40


def test_short_common_prefixes_are_not_shared(model):
    s = HFSampler(model, pad_token_id=0)
    s.generate([[5, 6, 7, 8], [5, 6, 9]], SamplingParams(temperature=0, max_new_tokens=2))
    assert s.stats["shared_prefix_tokens"] == 0


def test_draws_follow_the_distribution_and_never_pick_excluded_tokens():
    from agentrft.rollout.hf_sampler import _draw

    probs = torch.tensor([0.5, 0.0, 0.2, 0.3, 0.0])
    gen = torch.Generator().manual_seed(0)
    n = 20_000
    draws = _draw(probs.expand(n, -1), gen)
    freq = torch.bincount(draws, minlength=5).float() / n
    assert freq[1] == 0 and freq[4] == 0  # zero-probability tokens (e.g. cut by top-p) are never drawn
    # within ~4.5 standard errors of the target (sd of a frequency <= 0.0036 at n = 20k)
    assert torch.allclose(freq, probs, atol=0.016), freq
    # unnormalised rows are fine, and the same generator state gives the same draws
    again = _draw((3 * probs).expand(n, -1), torch.Generator().manual_seed(0))
    assert torch.equal(again, draws)
    assert _draw(torch.tensor([[0.0, 0.0, 1.0]]), gen).item() == 2
