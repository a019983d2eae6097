"""SFT step throughput and peak memory on short function-calling demonstrations.

The job (a user's report: "SFT took 16 min and 9.5 GB peak for one epoch of 256 short demonstrations, LoRA
r16, batch 8, on the 135M model"): method ``sft`` on ``bench/function_calling/data/sft_train.jsonl`` (320
single-turn demonstrations, 244-889 tokens each, 33-176 of them trained: the assistant's tool calls), the
bundled SmolLM2-135M with LoRA r16 on every projection, batch 8, micro-batch 8 (the defaults), float32 on
the CPU, ``--steps`` optimizer steps (default 6), no evals and no checkpoint before the end.

Each run is its own child process (``--worker``), so its peak RSS (``ru_maxrss``) is its own and no run
warms caches for another; it runs on tcmalloc where installed, as the ``agentrft`` command does
(:mod:`agentrft.allocator`; ``AGENTRFT_ALLOCATOR=system`` for glibc's malloc). Reported per arm, over
the steps after the first of each run (step 1 allocates the optimizer state and faults in the heap):

* median trained tokens per second of ``training_s`` (the assistant tokens the loss reads),
* median total tokens per second (every token of the step's demonstrations: prompt, tool schemas and
  answer, counted as a plain forward pass would see them),
* the same two per second of the process's CPU time (user + system),
* peak RSS of the child, and the padding share of the positions the decoder ran (``decoder_positions``).

Threads: ``--threads`` (default 1). The machine this was written on has 2 cores shared with other jobs;
with torch's 2 threads every parallel region waits for its slower thread, so one busy neighbour made a step
of the same code take 44 s or 184 s. One thread keeps wall-clock and CPU seconds close and repeatable; pass
``--threads 0`` on a machine of your own.

Arms (``--arms``, run alternately ``--repeats`` times): ``budgeted``, the step as it is
(:data:`agentrft.train.optim.MICRO_BATCH_POSITIONS`), and ``unbudgeted``, the same code with the token
budget switched off, which is the step as it was before it (micro-batches of ``optim.micro_batch_size`` rows
padded to their longest). Results are merged into ``--json`` by arm.

    .venv/bin/python bench/sft_throughput.py --json bench/results/sft_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "function_calling" / "data" / "sft_train.jsonl"
BATCH = 8
LORA_R = 16
SEED = 0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def job_config(out: Path, steps: int, data: Path, micro_batch: int | None):
    from agentrft.config import load_config

    optim = {"learning_rate": 1e-4} | ({"micro_batch_size": micro_batch} if micro_batch else {})
    return load_config({
        "method": "sft", "model": "smollm2-135m", "seed": SEED, "out_dir": str(out / "run"),
        "data": {"demonstrations_file": str(data)},
        "lora": {"enabled": True, "r": LORA_R, "alpha": 2 * LORA_R},
        "optim": optim,
        "training": {"max_steps": steps, "batch_size": BATCH, "eval_samples": 0,
                     "checkpoint_interval": 10_000, "keep_best_k": 1},
    })


ARMS = ("unbudgeted", "budgeted")


def run_sft(out: Path, steps: int, data: Path, micro_batch: int | None, arm: str, threads: int) -> dict:
    """One run in this process: per-step tokens, seconds and RSS."""
    import torch

    if threads:
        torch.set_num_threads(threads)

    from agentrft import allocator
    from agentrft.train import sft
    from agentrft.train.runner import run_job

    torch.manual_seed(SEED)
    cfg = job_config(out, steps, data, micro_batch)
    if arm == "unbudgeted":
        sft.MICRO_BATCH_POSITIONS = None  # micro_batches(..., max_positions=None): the split before the budget
    steps_seen: list[dict] = []
    real_step = sft.SFTMethod.step

    def timed_step(self, ctx, batch, step):  # the step's token counts, whatever the code under test reports
        cpu0 = time.process_time()
        metrics = real_step(self, ctx, batch, step)
        steps_seen.append({"cpu_s": time.process_time() - cpu0, "tokens_total": sum(t.num_tokens for t in batch),
                           "tokens_trained": sum(t.num_sampled_tokens for t in batch),
                           "training_s": metrics["training_s"], "loss": metrics["loss"],
                           "decoder_positions": metrics.get("decoder_positions"),
                           "decoder_tokens": metrics.get("decoder_tokens"),
                           "peak_rss_mb": peak_rss_mb()})
        return metrics

    sft.SFTMethod.step = timed_step
    t0 = time.perf_counter()
    run_job(cfg, log=lambda line: print(line, file=sys.stderr, flush=True))
    return {"arm": arm, "steps": steps_seen, "wall_s": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(),
            "allocator": allocator.active(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def summarise_runs(runs: list[dict]) -> dict:
    """Medians over the steps after the first of every run; the largest peak RSS."""
    later = [s for run in runs for s in (run["steps"][1:] or run["steps"])]
    positions = [s["decoder_positions"] for s in later if s["decoder_positions"] is not None]
    tokens = [s["decoder_tokens"] for s in later if s["decoder_tokens"] is not None]
    return {
        "trained_tokens_per_s": statistics.median(s["tokens_trained"] / s["training_s"] for s in later),
        "total_tokens_per_s": statistics.median(s["tokens_total"] / s["training_s"] for s in later),
        "trained_tokens_per_cpu_s": statistics.median(s["tokens_trained"] / s["cpu_s"] for s in later),
        "total_tokens_per_cpu_s": statistics.median(s["tokens_total"] / s["cpu_s"] for s in later),
        "training_s_median": statistics.median(s["training_s"] for s in later),
        "peak_rss_mb": max(run["peak_rss_mb"] for run in runs),
        "padding_fraction": 1 - sum(tokens) / sum(positions) if positions and len(tokens) == len(positions) else None,
        "loss": [[s["loss"] for s in run["steps"]] for run in runs],
        "runs": len(runs),
    }


def machine() -> dict:
    from agentrft.machine import cpu_count, cpu_model

    return {"cpu": cpu_model(), "cpus": cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "device": "cpu", "dtype": "float32"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {', '.join(ARMS)}")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each arm, alternated")
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps; the first is left out of the medians")
    ap.add_argument("--data", type=Path, default=DATA, help="demonstrations file (OpenAI supervised format)")
    ap.add_argument("--micro-batch", type=int, default=None, help="optim.micro_batch_size (default: the config's)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--json", dest="json_out", type=Path, default=None, help="merge the result into this file")
    ap.add_argument("--worker", choices=ARMS, help=argparse.SUPPRESS)
    ap.add_argument("--report", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        with tempfile.TemporaryDirectory(prefix="bench-sft-") as tmp:
            run = run_sft(Path(tmp), args.steps, args.data, args.micro_batch, args.worker, args.threads)
        Path(args.report).write_text(json.dumps(run))
        return

    from agentrft.allocator import preload_environ

    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if unknown := [a for a in arms if a not in ARMS]:
        raise SystemExit(f"unknown arms {unknown}; choose from {', '.join(ARMS)}")
    passed = [a for a in sys.argv[1:] if not a.startswith("--json") and a != str(args.json_out)]
    runs: dict[str, list[dict]] = {a: [] for a in arms}
    for i in range(args.repeats):
        for arm in arms if i % 2 == 0 else arms[::-1]:
            print(f"[bench] repeat {i + 1}/{args.repeats}: {arm}", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory(prefix="bench-sft-report-") as tmp:
                report = Path(tmp) / "report.json"
                worker = [sys.executable, __file__, *passed, "--worker", arm, "--report", str(report)]
                env = preload_environ(os.environ) or dict(os.environ)  # tcmalloc where installed, as `agentrft` runs
                if subprocess.run(worker, env=env).returncode != 0:
                    raise SystemExit(f"the {arm} worker failed")
                runs[arm].append(json.loads(report.read_text()))
    summary = {arm: summarise_runs(rs) for arm, rs in runs.items()}
    print(json.dumps(summary, indent=2))
    if args.json_out:
        doc = json.loads(args.json_out.read_text()) if args.json_out.exists() else {}
        doc["command"] = shlex.join([".venv/bin/python", "bench/sft_throughput.py", *sys.argv[1:]])
        doc["job"] = {"model": "smollm2-135m", "lora_r": LORA_R, "batch_size": BATCH, "steps": args.steps,
                      "micro_batch_size": args.micro_batch or "default", "torch_threads": args.threads or "default",
                      "medians_over": "steps 2..N of every run",
                      "data": str(args.data.relative_to(HERE.parent) if args.data.is_relative_to(HERE.parent)
                                  else args.data)}
        doc["machine"] = machine()
        doc.setdefault("summary", {}).update(summary)
        doc.setdefault("runs", {}).update(runs)
        if all(arm in doc["summary"] for arm in ARMS):
            after, before = doc["summary"]["budgeted"], doc["summary"]["unbudgeted"]
            doc["comparison"] = {
                "before": "unbudgeted (the step before the change: micro-batches of 8 rows padded to their longest)",
                "after": "budgeted (length-sorted micro-batches of at most MICRO_BATCH_POSITIONS positions)",
                **{f"{key}_ratio": after[key] / before[key] for key in
                   ("trained_tokens_per_s", "total_tokens_per_s", "total_tokens_per_cpu_s")},
                "peak_rss_ratio": before["peak_rss_mb"] / after["peak_rss_mb"]}
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
