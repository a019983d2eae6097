"""Dashboard speed on a large run: page loads in headless Chromium and API latency, over 10,000 trajectories.

A synthetic RFT run is written through :class:`~agentrft.jobs.store.RunStore` exactly as the trainer writes
one (metrics per step, validation every 10 steps, trajectories with tool calls, tool errors, sub-rewards,
advantages and ~``--tokens`` tokens each, checkpoints, events). The dashboard app (the same routers the
platform server includes) is served by uvicorn in a thread, then:

* page loads: time from navigation until the view's marker element appears (``#runs-table[data-loaded]``;
  the run page's charts and its first trajectory page; one trajectory's token view), median of ``--loads``;
* API latency: p50/p95 over ``--requests`` requests each of the runs list, a trajectory page (plain, filtered
  by an error kind, sorted by reward at a deep offset), one trajectory and the metric series.

    .venv/bin/python bench/dashboard.py --json bench/results/dashboard.json

Chromium is Debian's ``chromium`` package (``make test`` installs it); Playwright drives it, never downloads one.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from agentrft.jobs.store import RunStore

TOOLS = ("search_filings", "get_quote", "calculator")
ERROR_KINDS = ("timeout", "invalid_arguments", "exception")


def synthetic_record(rng: random.Random, step: int, task: int, sample: int, tokens: int) -> dict[str, Any]:
    """One stored trajectory as RFT logs it: ``Trajectory.to_dict()`` + grade, reward, advantage."""
    n_calls = rng.choice((0, 1, 1, 2, 2, 3))
    calls, messages = [], [{"role": "system", "content": "You are a financial analyst. Use the tools."},
                           {"role": "user", "content": f"Task {task}: what was the revenue growth of company {task % 97}?"}]
    for turn in range(n_calls):
        error = None
        if rng.random() < 0.08:
            kind = rng.choice(ERROR_KINDS)
            error = {"kind": kind, "message": f"{kind} after 2.0 s" if kind == "timeout" else f"{kind}: bad call"}
        name = TOOLS[turn % len(TOOLS)]
        call_id = f"call_{step}_{task}_{sample}_{turn}"
        result = error["message"] if error else f"{{\"company\": {task % 97}, \"revenue\": [{rng.randint(100, 999)}, {rng.randint(100, 999)}]}}"
        calls.append({"id": call_id, "name": name, "arguments": {"query": f"company {task % 97} revenue"}, "turn": turn,
                      "result": result, "error": error, "latency_s": round(rng.uniform(0.002, 0.3), 4)})
        messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(calls[-1]["arguments"])}}]})
        messages.append({"role": "tool", "tool_call_id": call_id, "content": result})
    messages.append({"role": "assistant", "content": f"Revenue grew by {rng.randint(1, 40)}%."})
    kinds: list[str] = []
    prompt = tokens // 3
    kinds += ["prompt"] * prompt
    segments = n_calls + 1
    rest = tokens - prompt
    for s in range(segments):
        sampled = rest // (2 * segments)
        kinds += ["sampled"] * sampled
        if s < segments - 1:
            kinds += ["env"] * sampled
    ids = [rng.randrange(49152) for _ in kinds]
    logprobs = [round(-rng.expovariate(3.0), 6) if k == "sampled" else None for k in kinds]
    correctness = rng.choice((0.0, 0.0, 0.5, 1.0))
    cost = -0.05 * n_calls
    reward = round(correctness + cost, 4)
    parse_error = rng.random() < 0.03
    return {
        "task_id": f"finance-train-{task}", "messages": messages, "token_ids": ids, "token_kinds": kinds,
        "logprobs": logprobs, "tool_calls": calls, "turns": n_calls + 1, "stop_reason": "answer",
        "errors": [{"kind": "sampler", "message": "RuntimeError: decode failed", "turn": 0}] if rng.random() < 0.01 else [],
        "timings": {"total_s": round(rng.uniform(1.0, 6.0), 3)}, "trace_id": f"{step}-{task}-{sample}-{rng.getrandbits(40):x}",
        "group_index": sample, "metadata": {},
        "grade": {"reward": reward, "sub_rewards": {"correctness": correctness, "tool_cost": cost},
                  "metadata": {"errors": {"sample_parse_error": parse_error, "other_error": False},
                               "error_messages": ["no number in the answer"] if parse_error else [],
                               "execution_time": 0.001, "grader_version": "sha256:synthetic"}},
        "reward": reward, "advantage": round(rng.gauss(0.0, 1.0), 4),
    }


def write_synthetic_run(run_dir: Path, n_trajectories: int = 10_000, steps: int = 100, group: int = 8,
                        tokens: int = 800, seed: int = 0, model: str = "smollm2-135m") -> Path:
    """A finished RFT run with ``n_trajectories`` trajectories spread over ``steps`` steps (a tenth of them
    validation rollouts, every 10 steps)."""
    rng = random.Random(seed)
    config = {"method": "rft", "model": model, "training": {"max_steps": steps, "eval_interval": 10},
              "rft": {"group_size": group}, "seed": seed}
    store = RunStore(run_dir)
    store.create_run(run_dir.name, "rft", config, {"dataset": "d" * 64, "grader": "g" * 64, "base_model": "b" * 64,
                                                   "config": "c" * 64})
    per_step = max(1, n_trajectories // steps)
    n_val = per_step // 10
    for step in range(1, steps + 1):
        records = [synthetic_record(rng, step, (step * 131 + i // group) % 500, i % group, tokens)
                   for i in range(per_step - (n_val if step % 10 == 0 else 0))]
        store.log_trajectories(step, records)
        reward = sum(r["reward"] for r in records) / len(records)
        store.log_metrics(step, {
            "reward_mean": reward, "reward/correctness": sum(r["grade"]["sub_rewards"]["correctness"] for r in records) / len(records),
            "reward/tool_cost": sum(r["grade"]["sub_rewards"]["tool_cost"] for r in records) / len(records),
            "accuracy": sum(r["grade"]["sub_rewards"]["correctness"] == 1.0 for r in records) / len(records),
            "tool_calls_per_rollout": sum(len(r["tool_calls"]) for r in records) / len(records),
            "tool_errors_per_rollout": sum(1 for r in records for c in r["tool_calls"] if c["error"]) / len(records),
            "tokens_mean": float(tokens), "sampled_tokens_mean": tokens / 3, "rollout_span_s_mean": 3.0,
            "sampling_s": 20 + rng.random(), "grading_s": 0.5, "training_s": 30 + rng.random(), "step_time_s": 51.0,
            "approx_kl": 0.001 * step, "entropy": 1.0 - step / (2 * steps), "clip_fraction": 0.02, "loss": -0.01,
            "grad_norm": 0.5, "lr": 1e-5, "trained_rollouts": float(len(records)), "zero_variance_groups": 1.0,
            "infra_failures": 0.0, "grader_errors": 0.0})
        if step % 10 == 0:
            val = [synthetic_record(rng, step, 1000 + i, 0, tokens) | {"advantage": None} for i in range(n_val)]
            store.log_trajectories(step, val, split="validation")
            store.log_metrics(step, {"reward_mean": sum(r["reward"] for r in val) / max(1, len(val)),
                                     "accuracy": 0.4, "tool_calls_per_rollout": 1.5, "tool_error_rate": 0.05,
                                     "tokens_mean": float(tokens), "rollout_span_s_mean": 2.5,
                                     "seconds_per_rollout": 0.4}, split="validation")
            store.record_checkpoint(step, run_dir / "checkpoints" / f"step-{step:06d}", reward, is_best=False)
            store.log_event("eval", f"step {step}: validation reward {reward:.3f}", step=step)
    store.set_status("completed")
    store.close()
    return run_dir


def _percentiles(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {"p50_ms": 1000 * statistics.median(xs), "p95_ms": 1000 * xs[min(len(xs) - 1, int(0.95 * len(xs)))]}


def api_latency(base: str, run_id: str, traj_id: int, requests: int) -> dict[str, dict[str, float]]:
    import httpx

    api = f"{base}/dashboard/api/runs"
    cases = {
        "runs list": (api, {}),
        "trajectory page": (f"{api}/{run_id}/trajectories", {"limit": 50}),
        "page, error filter": (f"{api}/{run_id}/trajectories", {"limit": 50, "error": "tool:timeout"}),
        "page, by reward, deep": (f"{api}/{run_id}/trajectories", {"limit": 50, "sort": "reward", "offset": 8000}),
        "page, split=train": (f"{api}/{run_id}/trajectories", {"limit": 50, "split": "train"}),
        "one trajectory": (f"{api}/{run_id}/trajectories/{traj_id}", {}),
        "metric series": (f"{api}/{run_id}/metrics", {}),
    }
    out = {}
    with httpx.Client(timeout=60) as client:
        for name, (url, params) in cases.items():
            client.get(url, params=params).raise_for_status()  # warm: the tokenizer loads once
            times = []
            for _ in range(requests):
                t0 = time.perf_counter()
                r = client.get(url, params=params)
                times.append(time.perf_counter() - t0)
                r.raise_for_status()
            out[name] = {**_percentiles(times), "bytes": len(r.content)}
    return out


def page_loads(base: str, run_id: str, traj_id: int, loads: int) -> dict[str, dict[str, float]]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is not installed: `make test` installs it (Debian package chromium)")
    pages = {
        "runs list": (f"{base}/dashboard#/", ["#runs-table[data-loaded]"]),
        "run page": (f"{base}/dashboard#/runs/{run_id}", ["#charts[data-loaded]", "#traj-table[data-loaded]"]),
        "one trajectory": (f"{base}/dashboard#/runs/{run_id}/trajectories/{traj_id}", ["#trajectory[data-loaded]"]),
    }
    out = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        for name, (url, markers) in pages.items():
            times = []
            for i in range(loads + 1):
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                t0 = time.perf_counter()
                page.goto(url)
                for m in markers:
                    page.wait_for_selector(m, state="attached", timeout=30_000)
                if i:  # the first load warms the server's caches (tokenizer)
                    times.append(time.perf_counter() - t0)
                page.close()
            out[name] = {"median_ms": 1000 * statistics.median(times), "max_ms": 1000 * max(times)}
        browser.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trajectories", type=int, default=10_000)
    ap.add_argument("--tokens", type=int, default=800, help="tokens per trajectory")
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--loads", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from agentrft.platform.dashboard import create_app
    from agentrft.platform.runs import DirectoryRunIndex
    from agentrft.serving import serve_in_background

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        run_dir = write_synthetic_run(root / "big-run", args.trajectories, tokens=args.tokens)
        write_s = time.perf_counter() - t0
        db_mb = (run_dir / "run.db").stat().st_size / 2**20
        print(f"wrote {args.trajectories} trajectories ({db_mb:.0f} MiB run.db) in {write_s:.1f} s")
        traj_id = args.trajectories // 2
        with serve_in_background(create_app(DirectoryRunIndex(root))) as v1:
            base = v1.removesuffix("/v1")
            api = api_latency(base, run_dir.name, traj_id, args.requests)
            loads = page_loads(base, run_dir.name, traj_id, args.loads)

    print(f"\n{'API request':<24}{'p50 ms':>10}{'p95 ms':>10}{'bytes':>10}")
    for name, r in api.items():
        print(f"{name:<24}{r['p50_ms']:>10.1f}{r['p95_ms']:>10.1f}{r['bytes']:>10}")
    print(f"\n{'page load (Chromium)':<24}{'median ms':>10}{'max ms':>10}")
    for name, r in loads.items():
        print(f"{name:<24}{r['median_ms']:>10.0f}{r['max_ms']:>10.0f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"trajectories": args.trajectories, "tokens_per_trajectory": args.tokens,
                                         "run_db_mib": round(db_mb, 1), "requests": args.requests, "loads": args.loads,
                                         "api": api, "page_loads": loads}, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
