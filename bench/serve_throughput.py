"""`agentrft serve` under concurrent load, against serving one request at a time, same process, same requests.

A burst of ``--requests`` chat completions arrives at once through the official
``openai`` SDK (one thread per request), each a finance test task with its tool
schemas (~400 prompt tokens), sampled at temperature 0.7 for up to
``--max-tokens`` tokens. Three ways to serve it:

* ``batched``: ``agentrft serve`` as shipped (waiting requests share one
  ``generate`` call, up to ``--batch`` sequences, 8 as `agentrft serve` ships);
* ``one_at_a_time``: the same server with ``max_batch_size=1``;
* ``hf_generate``: the do-it-yourself peer, transformers' ``model.generate`` on
  each request in turn (no HTTP: its figure is an upper bound for a naive server).

Each is run ``--repeats`` times, alternated; the JSON reports medians of
completion tokens per second, requests per second and per-request latency, and
the ratios of ``batched`` against the other two.

    .venv/bin/python bench/serve_throughput.py --json bench/results/serve_throughput.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from agentrft.envs.registry import get_env
from agentrft.jobs.trained import load_any_model
from agentrft.models.chat_format import get_chat_format
from agentrft.rollout.episode import normalize_messages, tools_for_row
from agentrft.rollout.hf_sampler import HFSampler
from agentrft.serving import ServerSettings, create_app, serve_in_background


@contextlib.contextmanager
def served(app):
    """``app`` under uvicorn on a free 127.0.0.1 port; yields an openai client."""
    import openai

    with serve_in_background(app) as base_url:
        yield openai.OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=600)


def burst(client, requests: list[dict], max_tokens: int) -> dict:
    """Send every request at once; wall time, completion tokens and per-request latencies."""

    def one(req: dict) -> tuple[float, int]:
        t = time.perf_counter()
        r = client.chat.completions.create(model="agent", messages=req["messages"], tools=req["tools"],
                                           temperature=0.7, max_tokens=max_tokens)
        return time.perf_counter() - t, r.usage.completion_tokens

    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(requests)) as pool:
        results = list(pool.map(one, requests))
    wall = time.perf_counter() - t0
    return summary(wall, [lat for lat, _ in results], sum(n for _, n in results), len(requests))


def hf_generate(model, cf, requests: list[dict], max_tokens: int) -> dict:
    """The naive peer: ``model.generate`` on each request in turn."""
    latencies, tokens = [], 0
    t0 = time.perf_counter()
    for req in requests:
        t = time.perf_counter()
        ids = torch.tensor([cf.prompt_tokens(normalize_messages(req["messages"]), req["tools"])])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=True,
                             temperature=0.7, top_p=1.0, top_k=0, eos_token_id=list(cf.stop_token_ids),
                             pad_token_id=cf.tokenizer.pad_token_id)
        tokens += out.shape[1] - ids.shape[1]
        latencies.append(time.perf_counter() - t)
    return summary(time.perf_counter() - t0, latencies, tokens, len(requests))


def summary(wall: float, latencies: list[float], tokens: int, n: int) -> dict:
    return {"wall_s": wall, "completion_tokens": tokens, "tokens_per_s": tokens / wall, "requests_per_s": n / wall,
            "latency_p50_s": statistics.median(latencies), "latency_max_s": max(latencies)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="model name, folder or run directory")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8, help="the batched server's max_batch_size (serve's default)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    loaded = load_any_model(args.model)
    cf = get_chat_format(loaded.tokenizer, loaded.chat_format)
    env = get_env("finance")
    rows = env.load_split("test")[: args.requests]
    requests = [{"messages": row["messages"], "tools": [t.schema() for t in tools_for_row(env.make_env(row), row)]}
                for row in rows]
    pad = loaded.tokenizer.pad_token_id

    def app(batch: int):  # the sampler and settings `agentrft serve --max-batch-size N` builds
        sampler = HFSampler(loaded.model, pad_token_id=pad, max_batch_size=batch, prefix_cache_tokens=8192)
        return create_app(sampler, cf, ServerSettings(model_name="agent", max_batch_size=batch))

    apps = {"batched": app(args.batch), "one_at_a_time": app(1)}
    runs: dict[str, list[dict]] = {"batched": [], "one_at_a_time": [], "hf_generate": []}
    with served(apps["batched"]) as batched, served(apps["one_at_a_time"]) as single:
        burst(batched, requests[:2], 8)  # warm-up: first-call set-up (oneDNN check, fused weights)
        burst(single, requests[:2], 8)
        for i in range(args.repeats):
            runs["batched"].append(burst(batched, requests, args.max_tokens))
            runs["one_at_a_time"].append(burst(single, requests, args.max_tokens))
            runs["hf_generate"].append(hf_generate(loaded.model, cf, requests, args.max_tokens))
            print(f"repeat {i + 1}: " + "  ".join(f"{k} {v[-1]['tokens_per_s']:.1f} tok/s" for k, v in runs.items()),
                  flush=True)
        calls = apps["batched"].state.engine.stats

    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in runs.items()}
    result = {
        "model": loaded.description, "requests": args.requests, "max_tokens": args.max_tokens,
        "batch": args.batch, "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
        "median": med, "runs": runs, "batched_server_stats": calls,
        "ratio_tokens_per_s": {"batched_vs_one_at_a_time": med["batched"]["tokens_per_s"]
                               / med["one_at_a_time"]["tokens_per_s"],
                               "batched_vs_hf_generate": med["batched"]["tokens_per_s"]
                               / med["hf_generate"]["tokens_per_s"]},
    }
    print(json.dumps({k: result[k] for k in ("median", "ratio_tokens_per_s", "batched_server_stats")}, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
