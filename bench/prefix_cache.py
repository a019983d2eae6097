"""Multi-turn sampling with and without the sampler's prefix KV cache, same process, same prompts.

A batch of finance rollouts is replayed turn by turn from the verbose oracle's
demonstrations (6 assistant turns, ~1,500 tokens each at the end): at each
turn the sampler continues every conversation by ``--new-tokens`` tokens
(greedy), exactly as the episode loop calls it. The "peer" is the same sampler
with the prefix cache disabled (full prefill every turn).

    .venv/bin/python bench/prefix_cache.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from agentrft.envs.registry import get_env
from agentrft.models.chat_format import get_chat_format
from agentrft.models.loading import load_model
from agentrft.rollout.episode import tools_for_row
from agentrft.rollout.hf_sampler import HFSampler
from agentrft.rollout.sampler import SamplingParams
from agentrft.train.demonstrations import demonstration_trajectory


def conversations(cf, rows, env) -> tuple[list[list[int]], list[list[list[int]]]]:
    """Initial prompts, and per row the env segments (tool results + next generation prompt) after each turn."""
    prompts, segments = [], []
    for row in rows:
        schemas = [t.schema() for t in tools_for_row(env.make_env(row), row)]
        traj = demonstration_trajectory(env.oracles["verbose"](row), schemas, cf)
        runs: list[tuple[str, list[int]]] = []
        for tid, kind in zip(traj.token_ids, traj.token_kinds):
            if runs and runs[-1][0] == kind:
                runs[-1][1].append(tid)
            else:
                runs.append((kind, [tid]))
        prompts.append(runs[0][1])
        segments.append([ids for kind, ids in runs[1:] if kind == "env"])
    return prompts, segments


def run(sampler: HFSampler, prompts, segments, new_tokens: int) -> tuple[float, list[list[int]]]:
    """Replay rollouts: sample a turn, append the sampled tokens and the next env segment, repeat."""
    sampler.reset_cache()
    params = SamplingParams(temperature=0.0, max_new_tokens=new_tokens)
    current = [list(p) for p in prompts]
    turns = min(len(s) for s in segments)
    t0 = time.perf_counter()
    for t in range(turns):
        out = sampler.generate(current, params)
        current = [c + o.token_ids + seg[t] for c, o, seg in zip(current, out, segments)]
    return time.perf_counter() - t0, current


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args()

    torch.manual_seed(0)
    model, tok = load_model(args.model)
    cf = get_chat_format(tok)
    env = get_env("finance")
    prompts, segments = conversations(cf, env.load_split("validation")[: args.batch], env)
    cached = HFSampler(model, pad_token_id=tok.pad_token_id)
    plain = HFSampler(model, pad_token_id=tok.pad_token_id, prefix_cache_tokens=0)
    run(cached, [p[:64] for p in prompts], [[[]]] * len(prompts), 4)  # warm-up
    t_cached, t_plain = [], []
    for _ in range(args.repeats):
        tp, final_plain = run(plain, prompts, segments, args.new_tokens)
        tc, final_cached = run(cached, prompts, segments, args.new_tokens)
        t_plain.append(tp)
        t_cached.append(tc)
    turns = min(len(s) for s in segments)
    result = {
        "model": args.model, "batch": args.batch, "turns": turns, "new_tokens_per_turn": args.new_tokens,
        "final_context_tokens_mean": statistics.fmean(len(p) for p in final_cached),
        "same_tokens_as_no_cache": final_plain == final_cached,
        "seconds_no_cache_median": statistics.median(t_plain),
        "seconds_prefix_cache_median": statistics.median(t_cached),
        "speedup": statistics.median(t_plain) / statistics.median(t_cached),
        "runs_no_cache": t_plain, "runs_prefix_cache": t_cached,
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
