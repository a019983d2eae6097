"""What this machine computes with: the CPU, its vector units, and its measured fp32 matmul peak.

Why measure the peak: a wall time means little without the machine it ran
on. The same ``make quickstart`` took 830 s on a 2-core AMD EPYC VM whose fp32
matmul peak measured ~450 GFLOP/s (AVX-512, oneDNN) and about 2.5x longer on a
2-core AVX2 VM peaking near 180 GFLOP/s. Every time this project quotes goes
with the peak of the machine that produced it (``agentrft info``), so a user
can scale it to theirs; ``bench/grpo_vs_trl.py`` records the same measurement
in its results.

The peak is the best of ``repeats`` timings of one ``n x n x n`` float32
product on this process's threads, per library: ``mkl`` (``torch.mm``,
PyTorch's default) and ``onednn`` (what agentrft's linear layers use where it
is faster, :mod:`agentrft.models.onednn`).
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

__all__ = ["cpu_count", "cpu_model", "cpu_vector_extensions", "matmul_peak_flops"]


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``'s ``model name``), else what the platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_vector_extensions() -> list[str]:
    """The vector instruction sets that matter to fp32 matmul throughput, of those this CPU has."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
    return [f for f in wanted if f in flags]


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask), not the host's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Best-of-``repeats`` fp32 FLOP/s of an ``n x n x n`` product on this process's threads, per library."""
    import torch

    from agentrft.models.onednn import linear, onednn_op

    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    products = {"mkl": lambda: torch.mm(a, b)}
    if onednn_op() is not None:
        products["onednn"] = lambda: linear(a, b)
    peaks = {}
    for name, f in products.items():
        f()  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            f()
            best = min(best, time.perf_counter() - t0)
        peaks[name] = 2 * n**3 / best
    return peaks
