"""Trajectory collation (loss mask from token kinds) and aligned token logprobs of a tiny Llama."""

from __future__ import annotations

import pytest
import torch

from agentrft.algo.batch import collate_trajectories, num_assistant_turns, sampled_turns
from agentrft.algo.logprobs import logprobs_from_logits, token_logprobs, token_logprobs_and_entropy
from agentrft.types import Trajectory


def tool_trajectory() -> Trajectory:
    """prompt [1 2 3] | sampled [4 5] | tool output [6 7] | sampled [8]"""
    t = Trajectory(task_id="t", messages=[])
    t.append_tokens([1, 2, 3], "prompt")
    t.append_tokens([4, 5], "sampled", [-0.1, -0.2])
    t.append_tokens([6, 7], "env")
    t.append_tokens([8], "sampled", [-0.3])
    return t


def short_trajectory() -> Trajectory:
    t = Trajectory(task_id="u", messages=[])
    t.append_tokens([1, 2], "prompt")
    t.append_tokens([9], "sampled", [-0.5])
    return t


def test_collate_shapes_values_and_right_padding():
    b = collate_trajectories([tool_trajectory(), short_trajectory()], [0.5, -1.0], pad_id=0)
    assert b.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 9, 0, 0, 0, 0, 0]]
    assert b.attention_mask.tolist() == [[1] * 8, [1, 1, 1, 0, 0, 0, 0, 0]]
    assert b.loss_mask.tolist() == [[0, 0, 0, 1, 1, 0, 0, 1], [0, 0, 1, 0, 0, 0, 0, 0]]
    assert torch.allclose(b.old_logprobs, torch.tensor([[0, 0, 0, -0.1, -0.2, 0, 0, -0.3], [0, 0, -0.5, 0, 0, 0, 0, 0]]))
    assert b.advantages.tolist() == [0.5, -1.0]
    assert (b.input_ids.dtype, b.attention_mask.dtype, b.loss_mask.dtype, b.old_logprobs.dtype) == (
        torch.long, torch.long, torch.float32, torch.float32)
    assert b.truncated_tokens == [0, 0] and b.num_truncated == 0
    moved = b.to("cpu")
    assert torch.equal(moved.input_ids, b.input_ids) and moved.truncated_tokens == [0, 0]


def test_per_turn_advantages_land_on_their_turns_sampled_tokens():
    trajs = [tool_trajectory(), short_trajectory()]
    assert sampled_turns(trajs[0]) == [-1, -1, -1, 0, 0, -1, -1, 1]
    assert [num_assistant_turns(t) for t in trajs] == [2, 1]
    b = collate_trajectories(trajs, [[0.25, -0.5], [2.0]], pad_id=0)
    assert b.advantages.tolist() == [[0, 0, 0, 0.25, 0.25, 0, 0, -0.5], [0, 0, 2.0, 0, 0, 0, 0, 0]]
    with pytest.raises(ValueError, match="mix per-trajectory floats and per-turn lists"):
        collate_trajectories(trajs, [[0.25, -0.5], 2.0], pad_id=0)
    with pytest.raises(ValueError, match="trajectory 0: 1 turn advantages for 2 turns"):
        collate_trajectories(trajs, [[0.25], [2.0]], pad_id=0)
    # a last turn the token budget cut to nothing still counts as a turn (the episode's count)
    trajs[1].turns = 2
    assert num_assistant_turns(trajs[1]) == 2
    b = collate_trajectories(trajs, [[0.25, -0.5], [2.0, 7.0]], pad_id=0)
    assert b.advantages[1].tolist() == [0, 0, 2.0, 0, 0, 0, 0, 0]


def test_tool_output_tokens_never_in_loss_mask():
    trajs = [tool_trajectory(), short_trajectory()]
    b = collate_trajectories(trajs, [1.0, 1.0], pad_id=0)
    for i, t in enumerate(trajs):
        for pos, kind in enumerate(t.token_kinds):
            assert b.loss_mask[i, pos].item() == (1.0 if kind == "sampled" else 0.0), (i, pos, kind)
    assert b.loss_mask.sum().item() == sum(t.num_sampled_tokens for t in trajs)


def test_truncation_drops_tail_and_is_reported():
    b = collate_trajectories([tool_trajectory(), short_trajectory()], [0.0, 0.0], pad_id=-1, max_len=6)
    assert b.input_ids.tolist() == [[1, 2, 3, 4, 5, 6], [1, 2, 9, -1, -1, -1]]
    assert b.loss_mask.tolist() == [[0, 0, 0, 1, 1, 0], [0, 0, 1, 0, 0, 0]]
    assert b.truncated_tokens == [2, 0] and b.num_truncated == 1


def test_first_token_never_trained_and_bad_input_rejected():
    t = Trajectory(task_id="s", messages=[])
    t.append_tokens([7, 8], "sampled", [-1.0, -2.0])
    b = collate_trajectories([t], [1.0], pad_id=0)
    assert b.loss_mask.tolist() == [[0, 1]] and b.old_logprobs.tolist() == [[0.0, -2.0]]
    with pytest.raises(ValueError):
        collate_trajectories([t], [1.0, 2.0], pad_id=0)
    broken = tool_trajectory()
    broken.logprobs[0] = -0.4  # a prompt token with a logprob violates the token record
    with pytest.raises(ValueError):
        collate_trajectories([broken], [1.0], pad_id=0)


# -- token logprobs ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def naive_logprobs(model, ids, attn, temperature=1.0):
    logits = model(input_ids=ids, attention_mask=attn).logits / temperature  # [B, T, V]
    logp_all = torch.log_softmax(logits, dim=-1)  # [B, T, V]
    out = torch.zeros(ids.shape)
    out[:, 1:] = logp_all[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    probs = logp_all.exp()
    ent = torch.zeros(ids.shape)
    ent[:, 1:] = -(probs * logp_all).sum(-1)[:, :-1]
    return out * attn, ent * attn


def test_token_logprobs_match_naive_reference(tiny_llama):
    b = collate_trajectories([tool_trajectory(), short_trajectory()], [0.0, 0.0], pad_id=0)
    ids, attn = b.input_ids, b.attention_mask
    for temperature in (1.0, 0.7):
        ref, ref_ent = naive_logprobs(tiny_llama, ids, attn, temperature)
        got = token_logprobs(tiny_llama, ids, attn, temperature=temperature, chunk_size=3)  # 3 chunks over T-1 = 7
        assert got.shape == (2, 8)
        assert torch.allclose(got, ref, atol=1e-5)
        assert got[:, 0].tolist() == [0.0, 0.0] and got[1, 3:].abs().sum() == 0  # position 0 and padding
        lp, ent = token_logprobs_and_entropy(tiny_llama, ids, attn, temperature=temperature, chunk_size=2)
        assert torch.allclose(lp, ref, atol=1e-5) and torch.allclose(ent, ref_ent, atol=1e-5)
        assert not ent.requires_grad


def test_token_logprobs_backprop(tiny_llama):
    ids = torch.tensor([[5, 17, 42, 3]])
    attn = torch.ones_like(ids)
    tiny_llama.zero_grad()
    token_logprobs(tiny_llama, ids, attn, chunk_size=2).sum().backward()
    got_grad = tiny_llama.lm_head.weight.grad.clone()
    tiny_llama.zero_grad()
    naive_logprobs(tiny_llama, ids, attn)[0].sum().backward()
    naive_grad = tiny_llama.lm_head.weight.grad
    assert torch.allclose(got_grad, naive_grad, atol=1e-5)
    tiny_llama.zero_grad()


def test_logprobs_from_logits_single_token_and_bad_temperature():
    lp, ent = logprobs_from_logits(torch.randn(2, 1, 7), torch.tensor([[3], [4]]))
    assert lp.tolist() == [[0.0], [0.0]] and ent is None
    with pytest.raises(ValueError):
        logprobs_from_logits(torch.randn(1, 2, 7), torch.tensor([[1, 2]]), temperature=0.0)


def test_needed_positions_fast_path_matches_full_path(tiny_llama):
    """The LM head on the loss-mask rows only gives the full path's values there, and the same gradients."""
    from agentrft.algo.logprobs import has_plain_head

    assert has_plain_head(tiny_llama)
    b = collate_trajectories([tool_trajectory(), short_trajectory()], [0.0, 0.0], pad_id=0)
    ids, attn, mask = b.input_ids, b.attention_mask, b.loss_mask
    assert 0 < mask.sum() < attn.sum()  # the test means something only if some positions are skipped
    for temperature in (1.0, 0.7):
        ref, ref_ent = naive_logprobs(tiny_llama, ids, attn, temperature)
        lp, ent = token_logprobs_and_entropy(tiny_llama, ids, attn, temperature=temperature, chunk_size=2, needed=mask)
        assert torch.allclose(lp, ref * mask, atol=1e-5) and torch.allclose(ent, ref_ent * mask, atol=1e-5)
        assert lp[mask == 0].abs().sum() == 0

    grads = []
    for needed in (None, mask):
        tiny_llama.zero_grad()
        (token_logprobs(tiny_llama, ids, attn, needed=needed) * mask).sum().backward()
        grads.append([p.grad.clone() for p in tiny_llama.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    assert all(torch.allclose(a, c, atol=1e-5) for a, c in zip(*grads))
    tiny_llama.zero_grad()


def test_shared_prefix_gives_the_unshared_values_and_gradients(tiny_llama):
    """The prefix's decoder pass done once for all micro-batches: same logprobs, entropy and gradients."""
    from agentrft.algo.logprobs import SharedPrefix, common_prefix_length

    torch.manual_seed(1)
    head = torch.randint(3, 100, (12,)).tolist()  # the tokens every row starts with (system prompt + tools)
    trajs = []
    for n_prompt, n_sampled in ((3, 4), (1, 6), (5, 2)):
        t = Trajectory(task_id="p", messages=[])
        t.append_tokens(head + torch.randint(3, 100, (n_prompt,)).tolist(), "prompt")
        t.append_tokens(torch.randint(3, 100, (n_sampled,)).tolist(), "sampled", [-1.0] * n_sampled)
        t.append_tokens([7], "env")
        trajs.append(t)
    assert common_prefix_length([t.token_ids for t in trajs]) == 12
    assert common_prefix_length([[1, 2, 3], [1, 2], [1, 9]]) == 1 and common_prefix_length([]) == 0

    def run(shared: bool):
        tiny_llama.zero_grad()
        prefix = SharedPrefix(tiny_llama, torch.tensor(head)) if shared else None
        values, ents = [], []
        for part in ([trajs[0], trajs[1]], [trajs[2]]):  # two micro-batches, right padding in the first
            b = collate_trajectories(part, [0.0] * len(part), pad_id=0)
            lp, ent = token_logprobs_and_entropy(tiny_llama, b.input_ids, b.attention_mask, temperature=0.7,
                                                 needed=b.loss_mask, prefix=prefix)
            (lp * b.loss_mask * torch.arange(1, lp.shape[1] + 1)).sum().backward()  # position-weighted
            values.append(lp.detach())
            ents.append(ent)
        if prefix is not None:
            prefix.backward()
        return values, ents, [p.grad.clone() for p in tiny_llama.parameters()]

    v0, e0, g0 = run(False)
    v1, e1, g1 = run(True)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(v0, v1))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(e0, e1))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g0, g1))
    emb = tiny_llama.get_input_embeddings().weight.grad
    assert emb[head].abs().sum() > 0  # the prefix's own tokens got their gradient, through the one backward
    tiny_llama.zero_grad()
    b = collate_trajectories(trajs, [0.0] * 3, pad_id=0)
    with pytest.raises(ValueError, match="inside the shared prefix"):
        token_logprobs(tiny_llama, b.input_ids, b.attention_mask, needed=b.loss_mask,
                       prefix=SharedPrefix(tiny_llama, b.input_ids[0, :16]))
    with pytest.raises(ValueError, match="needs the fast path"):
        token_logprobs(tiny_llama, b.input_ids, b.attention_mask, prefix=SharedPrefix(tiny_llama, torch.tensor(head)))


def test_group_prefixes_on_a_common_prefix_give_the_unshared_gradients(tiny_llama, monkeypatch):
    """Two levels (system prompt for all, question per group), micro-batches of 1 and of mixed groups."""
    from types import SimpleNamespace

    import agentrft.train.optim as optim
    from agentrft.algo.logprobs import PrefixRows, SharedPrefix
    from agentrft.train.optim import PrefixPlan

    monkeypatch.setattr(optim, "MIN_GROUP_EXTENSION", 4)  # the toy questions are 8 and 11 tokens

    torch.manual_seed(2)
    system = torch.randint(3, 100, (10,)).tolist()
    trajs = []
    for task in ("a", "b"):
        question = torch.randint(3, 100, (9 if task == "a" else 12,)).tolist()
        for _ in range(3):
            t = Trajectory(task_id=task, messages=[])
            t.append_tokens(system + question, "prompt")
            t.append_tokens(torch.randint(3, 100, (4,)).tolist(), "sampled", [-1.0] * 4)
            t.append_tokens([5, 6], "env")
            t.append_tokens(torch.randint(3, 100, (3,)).tolist(), "sampled", [-1.0] * 3)
            trajs.append(t)
    ctx = SimpleNamespace(policy=SimpleNamespace(model=tiny_llama, device=torch.device("cpu")))

    def grads(mb: int, plan_on: bool):
        tiny_llama.zero_grad()
        plan = PrefixPlan(ctx, trajs, min_tokens=4) if plan_on else None
        for s in range(0, len(trajs), mb):
            b = collate_trajectories(trajs[s : s + mb], [0.0] * len(trajs[s : s + mb]), pad_id=0)
            lp = token_logprobs(tiny_llama, b.input_ids, b.attention_mask, needed=b.loss_mask,
                                prefix=plan.for_rows(range(s, min(s + mb, len(trajs)))) if plan else None)
            (lp * b.loss_mask).sum().backward()
        if plan:
            plan.backward()
        return plan, [p.grad.clone() for p in tiny_llama.parameters()]

    _, reference = grads(1, False)
    plan, g1 = grads(1, True)
    # the system prompt, then each group's question up to the token before the first trained one
    assert [p.length for p in plan._made] == [10, 18, 21]
    assert plan.tokens == 10 + 8 + 11
    assert isinstance(plan.for_rows([0]), SharedPrefix) and isinstance(plan.for_rows([2, 3]), PrefixRows)
    assert plan.for_rows([2, 3]).length == plan.length_for([2, 3]) == 18  # rows of both groups: the shorter group prefix
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(reference, g1))
    _, g4 = grads(4, True)  # a micro-batch spanning both groups
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(reference, g4))
    monkeypatch.setattr(optim, "MIN_GROUP_EXTENSION", 64)  # the default: short questions are not worth a pass
    plan, g1 = grads(1, True)
    assert [p.length for p in plan._made] == [10] and plan.tokens == 10
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(reference, g1))
    tiny_llama.zero_grad()
    with pytest.raises(ValueError, match="must extend its parent"):
        SharedPrefix(tiny_llama, torch.tensor(system[:5]), parent=SharedPrefix(tiny_llama, torch.tensor(system)))


def _traj(task: str, prompt: list[int], sampled: int) -> Trajectory:
    t = Trajectory(task_id=task, messages=[])
    t.append_tokens(prompt, "prompt")
    t.append_tokens(list(range(3, 3 + sampled)), "sampled", [-1.0] * sampled)
    return t


def test_micro_batches_pick_the_order_with_the_least_padding(tiny_llama):
    from types import SimpleNamespace

    from agentrft.train.optim import PrefixPlan, forward_positions, micro_batches

    trajs = [_traj("a", [7] * 5, n) for n in (5, 45, 7, 43)]  # 10, 50, 12, 48 tokens
    chunks = micro_batches(trajs, 2, None)
    assert chunks == [[1, 3], [2, 0]]  # longest first: 2 x 50 + 2 x 12 positions, not 2 x 50 + 2 x 48
    assert forward_positions(trajs, chunks, None) == (124, 120)
    assert forward_positions(trajs, [[0, 1], [2, 3]], None) == (196, 120)
    same = [_traj("a", [7] * 5, 5) for _ in range(4)]
    assert micro_batches(same, 3, None) == [[0, 1, 2], [3]]  # a tie keeps the given order
    # a group's rollouts side by side read their group's prefix: cheaper than mixing groups by length
    ctx = SimpleNamespace(policy=SimpleNamespace(model=tiny_llama, device=torch.device("cpu")))
    system = list(range(10, 20))
    grouped = [_traj("a", system + [31] * 70, 2), _traj("a", system + [31] * 70, 30),  # 82 and 110 tokens
               _traj("b", system + [32] * 20, 60), _traj("b", system + [32] * 20, 70)]  # 90 and 100
    plan = PrefixPlan(ctx, grouped, min_tokens=4)
    # the system prompt for all; group a's question up to the token before its first trained one; group b's
    # 20-token question is too short to be worth its own pass (MIN_GROUP_EXTENSION)
    assert [p.length for p in plan._made] == [10, 79]
    assert micro_batches(grouped, 2, plan) == [[0, 1], [2, 3]]
    positions, tokens = forward_positions(grouped, [[0, 1], [2, 3]], plan)
    assert tokens == 10 + 69 + (3 + 31) + (80 + 90) and positions == 10 + 69 + 2 * 31 + 2 * 90
    assert forward_positions(grouped, [[1, 3], [2, 0]], plan)[0] == 10 + 69 + 2 * 100 + 2 * 80  # longest first


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_picked_logprobs_match_log_softmax_in_value_gradient_and_entropy(temperature):
    from agentrft.algo.logprobs import picked_logprobs

    torch.manual_seed(0)
    z = (torch.randn(6, 50) * 3).requires_grad_(True)
    targets = torch.randint(0, 50, (6,))
    upstream = torch.randn(6)
    ref_lp = torch.log_softmax(z / temperature, dim=-1)
    ref = ref_lp.gather(-1, targets[:, None]).squeeze(-1)
    (ref_grad,) = torch.autograd.grad((ref * upstream).sum(), z)
    ref_entropy = -(ref_lp.exp() * ref_lp).sum(-1)
    z2 = z.detach().clone().requires_grad_(True)
    lp, entropy = picked_logprobs(z2, targets, temperature=temperature, with_entropy=True)
    assert torch.allclose(lp, ref, atol=1e-5)
    assert torch.allclose(entropy, ref_entropy.detach(), atol=1e-5) and not entropy.requires_grad
    (lp * upstream).sum().backward()
    assert torch.allclose(z2.grad, ref_grad, atol=1e-6)
    lp, entropy = picked_logprobs(z.detach(), targets, temperature=temperature)
    assert entropy is None and torch.allclose(lp, ref.detach(), atol=1e-5)


def test_picked_logprobs_refuse_a_second_backward():
    from agentrft.algo.logprobs import picked_logprobs

    z = torch.randn(3, 10, requires_grad=True)
    lp, _ = picked_logprobs(z, torch.tensor([1, 2, 3]))
    lp.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="already backpropagated"):
        lp.sum().backward()
