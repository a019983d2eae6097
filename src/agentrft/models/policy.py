"""The policy: model + tokenizer + chat format, on the right device and dtype, with LoRA.

What a job's config says the model is (:func:`build_policy`): training builds
it, and so does loading a trained run back (:mod:`agentrft.jobs.trained`), so a
run's weights always land in the model they were trained in.

fp32 on CPU (bf16 matmuls are ~100× slower on CPUs without AMX), bf16 on GPU.
LoRA (peft) by default: the optimizer state is tiny, checkpoints are small
adapters, and the frozen base doubles as the KL reference (adapters disabled)
so no second model copy is needed. Full fine-tuning is one switch away.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from agentrft.config import JobConfig
from agentrft.errors import ConfigError
from agentrft.models.chat_format import get_chat_format
from agentrft.models.loading import load_model
from agentrft.models.onednn import choose, use_onednn
from agentrft.models.rms_norm import use_fused_rms_norm


@dataclass
class Policy:
    model: Any  # a transformers causal LM, possibly wrapped by peft
    tokenizer: Any
    chat_format: Any
    device: torch.device
    dtype: torch.dtype
    is_lora: bool

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    @contextlib.contextmanager
    def reference(self):
        """The frozen reference policy: the base model with LoRA adapters switched off."""
        if not self.is_lora:
            raise RuntimeError("a reference model for full fine-tuning must be a separate copy")
        with self.model.disable_adapter():
            yield self.model


def resolve_device_dtype(cfg: JobConfig) -> tuple[torch.device, torch.dtype]:
    dev = cfg.training.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = cfg.training.dtype
    if dtype == "auto":
        dtype = "bfloat16" if dev == "cuda" else "float32"
    return torch.device(dev), getattr(torch, dtype)


def build_policy(cfg: JobConfig, model=None, tokenizer=None) -> Policy:
    """Load (or wrap the given) model, apply LoRA per config, move to device/dtype."""
    device, dtype = resolve_device_dtype(cfg)
    if model is None:
        model, tokenizer = load_model(cfg.model, dtype=str(dtype).replace("torch.", ""), device=str(device))
    model.to(device=device, dtype=dtype)
    is_lora = cfg.lora.enabled
    if is_lora:
        from peft import LoraConfig, get_peft_model

        layers = None
        if cfg.lora.top_layers is not None:
            depth = int(getattr(model.config, "num_hidden_layers", 0) or 0)
            if not 1 <= cfg.lora.top_layers <= depth:
                raise ConfigError(f"lora.top_layers: {cfg.lora.top_layers} is not between 1 and the model's "
                                  f"{depth} decoder layers")
            layers = list(range(depth - cfg.lora.top_layers, depth))
        lcfg = LoraConfig(
            layers_to_transform=layers,
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=list(cfg.lora.target_modules),
            task_type="CAUSAL_LM",
        )
        with warnings.catch_warnings():  # peft reads transformers' deprecated alias; nothing of ours to change
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            model = get_peft_model(model, lcfg)
        if cfg.lora.train_top_layers is not None:
            _freeze_adapters_below(model, cfg.lora.train_top_layers)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
        _sparse_tied_embedding_grad(model)
    model.config.use_cache = True
    if choose(cfg.training.cpu_matmul, device, dtype):
        use_onednn(model)  # every nn.Linear, adapters' included: forward, backward and eval
    use_fused_rms_norm(model)  # float32 norms whose formula the fused kernel reproduces (checked per module)
    return Policy(model, tokenizer, get_chat_format(tokenizer, cfg.chat_format), device, dtype, is_lora)


def _sparse_tied_embedding_grad(model) -> bool:
    """Full fine-tuning of a model whose input embedding is its LM head's weight: the lookup's gradient as
    sparse rows, added into the head's dense gradient (True when set).

    The dense gradient of an embedding lookup is a zero-filled [V, H] tensor (113 MB for the bundled model)
    with a few hundred rows written, made and added once per micro-batch; the head already gives that
    parameter a dense [V, H] gradient, so the lookup's rows can go straight into it. The sum is the same.
    """
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    if not isinstance(embed, torch.nn.Embedding) or head is None or head.weight is not embed.weight:
        return False
    embed.sparse = True
    return True


def _freeze_adapters_below(model, top: int) -> None:
    """Only the adapters of the last ``top`` decoder layers train; the rest are frozen where they stand."""
    import re

    depth = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    if not 1 <= top <= depth:
        raise ConfigError(f"lora.train_top_layers: {top} is not between 1 and the model's {depth} decoder layers")
    lowest = depth - top
    layer_of = re.compile(r"\.layers\.(\d+)\.")
    for name, p in model.named_parameters():
        if "lora_" in name:
            m = layer_of.search(name)
            if m is None:
                raise ConfigError(f"lora.train_top_layers: cannot tell which decoder layer adapter {name!r} is in")
            p.requires_grad_(int(m.group(1)) >= lowest)
