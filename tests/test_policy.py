"""LoRA placement: ``lora.top_layers`` adapts only the last decoder layers, and says so clearly when it cannot."""

import pytest

from agentrft.config import load_config
from agentrft.errors import ConfigError
from agentrft.models.loading import make_tiny_model
from agentrft.train.policy import build_policy


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
