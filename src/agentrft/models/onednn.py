"""float32 linear layers through oneDNN on CPUs where it beats the default BLAS (MKL).

Why: PyTorch's CPU ``F.linear`` calls MKL's sgemm. On the AMD EPYC machines
we develop and test on, MKL runs well below the chip's AVX-512 throughput
(~195 GFLOP/s for a 4096x576 @ 576x1536 product), while oneDNN -- also inside
every PyTorch CPU wheel -- reaches ~400 GFLOP/s on the same product, and 1.9x
MKL at the batch-16 shapes of decoding (measured; ``bench/grpo_vs_trl.py``
times a 2048^3 product through both in every run).
Every forward, backward and sampling step of a small model is mostly these
products, so routing them through oneDNN speeds up the whole CPU path.

How: :func:`linear` computes ``x @ W^T + b`` with
``torch.ops.mkldnn._linear_pointwise`` (the op PyTorch's own CPU compiler
emits for linear layers), in an autograd function whose backward is two more
oneDNN products (``dX = dY @ W``, ``dW = dY^T @ X``). :func:`use_onednn`
turns a model's ``nn.Linear`` modules into :class:`OneDNNLinear`, which calls it (peft's adapter layers wrap
``nn.Linear`` modules, so LoRA models are covered); nothing about the
weights, their names or their checkpoints changes.

When: :func:`choose` resolves ``training.cpu_matmul``. ``auto`` picks oneDNN
only if the op exists, agrees with ``torch.mm`` on a check product and is at
least :data:`AUTO_MARGIN` faster than MKL on a calibration product in this
process (so a CPU where MKL is as fast keeps MKL: on a 2-core AVX2 EPYC the
two measured within 10 % of each other, and a plain "faster" picked either at
random from one process to the next); ``onednn`` insists (an error if the op
is missing or wrong); ``mkl`` keeps PyTorch's default. Non-float32 or non-CPU
tensors always take ``F.linear``. A training run pins what ``auto`` picked at
its start (:func:`agentrft.train.runner.setup`), so its resume computes with
the same library.
"""

from __future__ import annotations

import functools
import time
from typing import Literal

import torch
import torch.nn.functional as F

from agentrft.errors import ConfigError

__all__ = ["OneDNNLinear", "auto_choice", "choose", "linear", "onednn_op", "use_onednn", "uses_onednn"]

Choice = Literal["auto", "onednn", "mkl"]

AUTO_MARGIN = 0.15
"""``auto`` takes oneDNN only when its calibration product is at least this much faster than MKL's
(AVX-512 EPYC: about 2x; 2-core AVX2 EPYC: within a few percent either way, so MKL)."""


def onednn_op():
    """``torch.ops.mkldnn._linear_pointwise`` or None when this PyTorch build lacks it."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


def _mm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ w^T (+ b)`` for 2-D float32 CPU ``x`` [M, K], ``w`` [N, K] (any strides) through oneDNN."""
    return onednn_op()(x, w, b, "none", [], "")


@functools.lru_cache(maxsize=1)
def _verdict() -> tuple[bool, bool, str]:
    """(oneDNN usable, usable and faster here, why): one check and one timing per process."""
    if onednn_op() is None:
        return False, False, "this PyTorch build has no oneDNN linear op"
    gen = torch.Generator().manual_seed(0)
    x, w, b, g = (torch.randn(s, generator=gen) for s in ((37, 64), (48, 64), (48,), (37, 48)))
    try:  # the three products of forward and backward, with the strides they have there
        ok = all(torch.allclose(a, r, atol=1e-4, rtol=1e-4) for a, r in (
            (_mm(x, w, b), x @ w.T + b), (_mm(g, w.T), g @ w), (_mm(g.T, x.T), g.T @ x)))
    except RuntimeError as exc:
        return False, False, f"oneDNN linear failed its check: {exc}"
    if not ok:
        return False, False, "oneDNN linear disagrees with torch.mm on the check product"
    x, w = torch.randn(512, 576, generator=gen), torch.randn(1536, 576, generator=gen)

    def best(f) -> float:
        f()
        times = []
        for _ in range(3):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        return min(times)

    t_dnn, t_mkl = best(lambda: _mm(x, w)), best(lambda: F.linear(x, w))
    return True, clearly_faster(t_dnn, t_mkl), \
        f"oneDNN {t_dnn * 1e3:.2f} ms vs MKL {t_mkl * 1e3:.2f} ms on a 512x576x1536 product"


def clearly_faster(t_onednn: float, t_mkl: float) -> bool:
    """Whether oneDNN's time beats MKL's by at least :data:`AUTO_MARGIN` (``auto``'s rule)."""
    return t_onednn < t_mkl * (1 - AUTO_MARGIN)


def auto_choice() -> tuple[str, str]:
    """What ``training.cpu_matmul: auto`` picks for float32 on this CPU (``onednn`` or ``mkl``), and why."""
    usable, faster, why = _verdict()
    return ("onednn" if usable and faster else "mkl"), why


def choose(setting: Choice, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> bool:
    """Whether to route linear layers through oneDNN for ``training.cpu_matmul: setting``."""
    if torch.device(device).type != "cpu" or dtype != torch.float32 or setting == "mkl":
        return False
    usable, faster, why = _verdict()
    if setting == "onednn":
        if not usable:
            raise ConfigError(f"training.cpu_matmul: onednn is not usable here: {why}; use auto or mkl")
        return True
    return faster


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, weight, bias):  # x2 [M, K]
        ctx.save_for_backward(x2, weight)
        ctx.has_bias = bias is not None
        return _mm(x2, weight, bias)

    @staticmethod
    def backward(ctx, grad):  # grad [M, N]
        x2, weight = ctx.saved_tensors
        grad = grad.contiguous()
        gx = _mm(grad, weight.T) if ctx.needs_input_grad[0] else None  # [M, N] @ [N, K]
        gw = _mm(grad.T, x2.T) if ctx.needs_input_grad[1] else None  # [N, M] @ [M, K]
        gb = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` through oneDNN for float32 CPU tensors (with gradients); anything else takes ``F.linear``."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32 or x.numel() == 0:
        return F.linear(x, weight, bias)
    x2 = x.reshape(-1, x.shape[-1])
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)):
        y = _Linear.apply(x2, weight, bias)
    else:
        y = _mm(x2, weight, bias)
    return y.view(*x.shape[:-1], weight.shape[0])


class OneDNNLinear(torch.nn.Linear):
    """An ``nn.Linear`` whose forward is :func:`linear`; :func:`use_onednn` swaps modules' class to it and back
    (same parameters and state-dict keys; picklable and copyable like any module)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def use_onednn(model: torch.nn.Module, enabled: bool = True) -> int:
    """Route every ``nn.Linear`` in ``model`` through :func:`linear` (``enabled=False``: back); returns how many."""
    old, new = (torch.nn.Linear, OneDNNLinear) if enabled else (OneDNNLinear, torch.nn.Linear)
    n = 0
    for module in model.modules():
        if type(module) is old:
            module.__class__ = new
            n += 1
    return n


def uses_onednn(model: torch.nn.Module) -> bool:
    return any(type(m) is OneDNNLinear for m in model.modules())
