"""``agentrft info``: what this machine computes with, so every quoted time can be scaled to yours.

It prints the CPU and its measured fp32 matmul peak (:mod:`agentrft.machine`;
about a second to measure), torch and its threads, the allocator this process
runs on (:mod:`agentrft.allocator`) and the library ``training.cpu_matmul: auto``
picks (:mod:`agentrft.models.onednn`).
"""

from __future__ import annotations

import json
import os

import click


@click.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--no-peak", is_flag=True, help="Skip measuring the matmul peak.")
def info_cmd(as_json: bool, no_peak: bool) -> None:
    """What this machine computes with: CPU and fp32 matmul peak, torch, threads, allocator, matmul library."""
    import torch

    from agentrft import allocator, machine
    from agentrft.models.onednn import auto_choice

    matmul, why = auto_choice()
    facts = {
        "cpu": machine.cpu_model(),
        "cpu_count": machine.cpu_count(),
        "cpu_vector_extensions": machine.cpu_vector_extensions(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "allocator": allocator.active(),
        "tcmalloc_installed": allocator.find_tcmalloc() is not None,
        "ld_preload_for_children": os.environ.get("LD_PRELOAD"),
        "cpu_matmul_auto": matmul,
        "cpu_matmul_check": why,
    }
    if not no_peak:
        peaks = machine.matmul_peak_flops()
        facts["matmul_peak_gflops"] = round(max(peaks.values()) / 1e9, 1)
        facts["matmul_peak_gflops_by_library"] = {lib: round(v / 1e9, 1) for lib, v in peaks.items()}
    if as_json:
        click.echo(json.dumps(facts))
        return
    for key, value in facts.items():
        if isinstance(value, list):
            value = " ".join(value) or "-"
        elif isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        click.echo(f"{key:30} {value}")
    if not no_peak:
        click.echo(f"{'':30} (fp32, best of 5 2048^3 products on {facts['threads']} threads: quote it beside any time)")
