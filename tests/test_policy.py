"""LoRA placement: ``lora.top_layers`` adapts only the last decoder layers, and says so clearly when it cannot."""

import pytest

from agentrft.config import load_config
from agentrft.errors import ConfigError
from agentrft.models.loading import make_tiny_model
from agentrft.models.policy import build_policy


def _cfg(**lora):
    return load_config({"method": "rft", "model": "tiny", "data": {"env": "toy"}, "lora": {"r": 4, **lora}})


def _adapted_layers(policy) -> set[int]:
    return {int(name.split(".layers.")[1].split(".")[0]) for name, p in policy.model.named_parameters()
            if p.requires_grad and "lora_" in name}


def test_top_layers_adapts_only_the_last_layers():
    model, tok = make_tiny_model(num_layers=3)
    assert _adapted_layers(build_policy(_cfg(), model, tok)) == {0, 1, 2}
    model, tok = make_tiny_model(num_layers=3)
    policy = build_policy(_cfg(top_layers=1), model, tok)
    assert _adapted_layers(policy) == {2}
    assert all(not p.requires_grad for name, p in policy.model.named_parameters() if "lora_" not in name)


def test_top_layers_beyond_the_model_is_a_config_error():
    model, tok = make_tiny_model(num_layers=2)
    with pytest.raises(ConfigError, match="lora.top_layers: 3 is not between 1 and the model's 2 decoder layers"):
        build_policy(_cfg(top_layers=3), model, tok)
    with pytest.raises(Exception, match="top_layers"):
        _cfg(top_layers=0)


def _lora_params(policy, layer: int) -> list:
    return [p for name, p in policy.model.named_parameters() if "lora_" in name and f".layers.{layer}." in name]


def test_train_top_layers_keeps_every_adapter_but_trains_only_the_top_ones():
    import torch

    from agentrft.train.optim import build_optimizer

    model, tok = make_tiny_model(num_layers=3)
    policy = build_policy(_cfg(train_top_layers=1), model, tok)
    assert all(_lora_params(policy, layer) for layer in (0, 1, 2))  # adapters everywhere (an SFT adapter loads whole)
    assert _adapted_layers(policy) == {2}
    with torch.no_grad():  # stand-in for adapter values loaded from an earlier run
        for layer in (0, 1, 2):
            for p in _lora_params(policy, layer):
                p.fill_(0.01)
    before = {layer: [p.detach().clone() for p in _lora_params(policy, layer)] for layer in (0, 1)}
    opt, _ = build_optimizer(_cfg(train_top_layers=1), policy, total_steps=1)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in _lora_params(policy, 2)}
    ids = torch.randint(0, 50, (2, 12))
    policy.model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    for layer in (0, 1):  # frozen where they stood, and never reached by the backward pass
        assert all(p.grad is None for p in _lora_params(policy, layer))
        assert all(torch.equal(p, b) for p, b in zip(_lora_params(policy, layer), before[layer]))
    assert all(p.grad is not None for p in _lora_params(policy, 2))


def test_train_top_layers_is_checked_against_the_model_and_the_config():
    model, tok = make_tiny_model(num_layers=2)
    with pytest.raises(ConfigError, match="lora.train_top_layers: 3 is not between 1 and the model's 2"):
        build_policy(_cfg(train_top_layers=3), model, tok)
    with pytest.raises(ConfigError, match="needs lora.enabled"):
        load_config({"method": "rft", "model": "tiny", "data": {"env": "toy"},
                     "lora": {"enabled": False, "train_top_layers": 1}})
    with pytest.raises(ConfigError, match="exceeds lora.top_layers"):
        _cfg(top_layers=1, train_top_layers=2)


@pytest.mark.parametrize("setting", ["mkl", "onednn"])
def test_cpu_matmul_decides_which_library_the_policys_linear_layers_use(setting):
    from agentrft.models.onednn import OneDNNLinear, onednn_op

    if setting == "onednn" and onednn_op() is None:
        pytest.skip("this PyTorch build has no oneDNN")
    model, tok = make_tiny_model(num_layers=2)
    cfg = load_config({"method": "rft", "model": "tiny", "data": {"env": "toy"}, "training": {"cpu_matmul": setting}})
    policy = build_policy(cfg, model, tok)
    routed = [m for m in policy.model.modules() if isinstance(m, OneDNNLinear)]
    assert bool(routed) is (setting == "onednn")


def test_full_fine_tuning_of_tied_embeddings_gets_the_same_dense_gradient_and_steps():
    """The lookup's gradient comes as sparse rows added into the head's dense one: same sum, fused AdamW steps."""
    import copy

    import torch

    from agentrft.models.rms_norm import uses_fused_rms_norm

    model, tok = make_tiny_model(num_layers=2)
    reference = copy.deepcopy(model)
    cfg = load_config({"method": "rft", "model": "tiny", "data": {"env": "toy"}, "lora": {"enabled": False}})
    policy = build_policy(cfg, model, tok)
    assert policy.model.get_input_embeddings().sparse and uses_fused_rms_norm(policy.model)
    for p in reference.parameters():
        p.requires_grad_(True)
    ids = torch.randint(3, 1000, (2, 12))
    for m in (policy.model, reference):
        m.train()
        for _ in range(2):  # accumulate two micro-batches, as the trainers do
            m(input_ids=ids).logits.float().logsumexp(-1).mean().backward()
    weight = policy.model.get_input_embeddings().weight
    assert not weight.grad.is_sparse
    assert torch.allclose(weight.grad, reference.get_input_embeddings().weight.grad, atol=1e-6)
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-3, fused=True)
    before = weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, weight.detach())


def test_a_sparse_gradient_alone_is_made_dense_before_the_step():
    from types import SimpleNamespace

    import torch

    from agentrft.rollout.sampler import ScriptedSampler
    from agentrft.train.optim import optimizer_step

    embed = torch.nn.Embedding(10, 4, sparse=True)
    embed(torch.tensor([1, 2])).sum().backward()
    assert embed.weight.grad.is_sparse
    optimizer = torch.optim.AdamW([embed.weight], lr=0.1, weight_decay=0.0, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    ctx = SimpleNamespace(policy=SimpleNamespace(trainable_parameters=lambda: [embed.weight]), optimizer=optimizer,
                          scheduler=scheduler, cfg=SimpleNamespace(optim=SimpleNamespace(max_grad_norm=1.0)),
                          sampler=ScriptedSampler([]))
    before = embed.weight.detach().clone()
    stepped, norm = optimizer_step(ctx)
    assert stepped and norm == pytest.approx(8**0.5)  # two rows of four ones
    changed = (embed.weight.detach() != before).any(dim=1)
    assert changed.tolist() == [False, True, True] + [False] * 7
