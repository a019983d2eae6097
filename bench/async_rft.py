"""RFT steps/hour, synchronous vs asynchronous (``rft.asynchronous``), on the same job against the same server.

One process holds an ``agentrft serve`` app (LoRA hot-swap, :func:`agentrft.serving.serve_in_background`)
over the base model, and a REAL HTTP tool endpoint on 127.0.0.1 (Agent RFT wire format) whose every call
sleeps ``--tool-s`` (1 s). Each rollout's environment fetches its task context from that endpoint when it
is set up (one call, so every rollout pays at least one real round trip) and offers it as the ``lookup``
tool, which the model may call on its second turn. The reward is the toy environment's (share of even
token ids: a signal every model can move, so every step updates).

The job: ``--steps`` RFT steps, batch 2 x group 4, per-episode rollouts of up to 2 turns, LoRA r 8, the
adapter pushed to the server after every update; synchronous (sample, then train) and asynchronous
(``max_staleness: 1``: step k+1 is sampled while step k trains), alternated ``--repeats`` times.
Steps/hour is ``3600 * steps / sum(step_time_s)`` over the run's steps (the runner's own per-step wall
clock: collection or the wait for it, grading, the update, the push); model loading is left out.

    .venv/bin/python bench/async_rft.py --model smollm2-135m --steps 4 --repeats 1 --json bench/results/async_rft.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx

from agentrft.config import load_config
from agentrft.envs.toy import even_token_share
from agentrft.jobs.store import RunStore
from agentrft.models.chat_format import get_chat_format
from agentrft.models.loading import load_model, save_tiny_model
from agentrft.rollout.hf_sampler import HFSampler
from agentrft.serving import ServerSettings, create_app, serve_in_background
from agentrft.serving.adapters import enable_lora
from agentrft.tools.environment import Environment, EnvSpec
from agentrft.train.runner import run_job
from async_rollouts import serve_function_calls  # bench/, beside this script

TOOL_URL = "AGENTRFT_BENCH_TOOL_URL"
"""The environment variable that tells :func:`env_spec` (imported by name through ``data.env``) the tool URL."""


def start_tool_server(sleep_s: float) -> ThreadingHTTPServer:
    """An Agent RFT tool server on a free port: each POSTed function_call sleeps ``sleep_s``, then answers."""
    return serve_function_calls(
        lambda req: (sleep_s, f"context of {req['item']['id']}: {req['arguments']}"))


def call_tool(row: dict, name: str, arguments: dict) -> str:
    """One Agent RFT function_call to the bench's tool server."""
    body = {"type": "function_call", "call_id": f"call_{name}", "id": f"fc_{name}", "name": name,
            "arguments": json.dumps(arguments), "item": row}
    r = httpx.post(os.environ[TOOL_URL], json=body, timeout=30)
    r.raise_for_status()
    return r.json()["output"]


class LookupEnvironment(Environment):
    """Fetches the task's context from the tool server when set up; ``lookup`` asks it again."""

    def setup(self, row: dict) -> None:
        self.row = row
        self.context = call_tool(row, "context", {"task": row["id"]})

    def lookup(self, query: str) -> str:
        """Look something up about the task.

        Args:
            query: what to look up
        """
        return call_tool(self.row, "lookup", {"query": query})


WORDS = ["apple", "river", "stone", "cloud", "lamp", "tiger", "paper", "glass"]


def env_spec() -> EnvSpec:
    rows = [{"id": f"bench-{i}", "messages": [{"role": "user", "content": f"Say something about {w}."}]}
            for i, w in enumerate(WORDS * 4)]
    return EnvSpec(name="async-rft-bench", description="toy reward, tools behind a slow HTTP endpoint",
                   splits=("train", "validation"), load_split=lambda split: list(rows),
                   make_env=lambda row: LookupEnvironment(), grade=even_token_share)


def job(model: str, out_dir: Path, url: str, sync_dir: Path, steps: int, asynchronous: bool):
    return load_config({
        "method": "rft", "model": model, "out_dir": str(out_dir), "data": {"env": "async_rft:env_spec"},
        "lora": {"r": 8}, "seed": 0,
        "training": {"max_steps": steps, "batch_size": 2, "eval_samples": 0, "checkpoint_interval": steps,
                     "cpu_matmul": "mkl"},
        "rft": {"group_size": 4, "asynchronous": asynchronous, "max_staleness": 1},
        "optim": {"learning_rate": 1e-3},
        "rollout": {"max_turns": 2, "max_new_tokens": 16, "temperature": 1.0, "mode": "per_episode"},
        "sampler": {"backend": "openai_compat", "url": url, "model": "bench-adapter", "sync_dir": str(sync_dir),
                    "timeout_s": 300}})


def measure(model: str, work: Path, url: str, root: Path, steps: int, asynchronous: bool, tag: str) -> dict:
    run_dir = work / tag
    t0 = time.perf_counter()
    run_job(job(model, run_dir, url, run_dir / "sync", steps, asynchronous), log=lambda s: None)
    wall = time.perf_counter() - t0
    with RunStore(run_dir) as store:
        frame = store.metrics_frame("train")
    step_s = sum(frame[s]["step_time_s"] for s in frame)
    out = {"steps": len(frame), "steps_time_s": round(step_s, 2), "run_wall_s": round(wall, 2),
           "steps_per_hour": round(3600 * len(frame) / step_s, 1),
           "training_s_mean": round(statistics.mean(frame[s]["training_s"] for s in frame), 2),
           "sampling_s_mean": round(statistics.mean(frame[s]["sampling_s"] for s in frame), 2),
           "trained_rollouts": sum(frame[s]["trained_rollouts"] for s in frame)}
    if asynchronous:
        out["staleness_max"] = max(frame[s]["async/staleness_max"] for s in frame)
        out["wait_s_mean"] = round(statistics.mean(frame[s]["async/wait_s"] for s in frame), 2)
        out["is_weight_mean"] = round(statistics.mean(frame[s].get("is_weight_mean", 1.0) for s in frame), 4)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny", help="'tiny' (the random test model) or a model name/folder")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--tool-s", type=float, default=1.0)
    p.add_argument("--json", default=None)
    args = p.parse_args()

    tool = start_tool_server(args.tool_s)
    os.environ[TOOL_URL] = f"http://127.0.0.1:{tool.server_address[1]}/call"
    with tempfile.TemporaryDirectory(prefix="async-rft-bench-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        model = str(save_tiny_model(work / "tiny")) if args.model == "tiny" else args.model
        base, tok = load_model(model)
        root = work / "runs"
        root.mkdir()
        app = create_app(HFSampler(base, pad_token_id=tok.pad_token_id), get_chat_format(tok, "hermes"),
                         ServerSettings(model_name="base", max_context=2048))
        enable_lora(app, base, root)
        url = stack.enter_context(serve_in_background(app))
        runs: dict[str, list[dict]] = {"sync": [], "async": []}
        for r in range(args.repeats):
            for mode in ("sync", "async"):
                m = measure(model, root, url, root, args.steps, mode == "async", f"{mode}-{r}")
                runs[mode].append(m)
                print(f"{mode} #{r}: {m}", flush=True)
    tool.shutdown()
    med = {mode: statistics.median(m["steps_per_hour"] for m in ms) for mode, ms in runs.items()}
    result = {"model": args.model, "steps": args.steps, "repeats": args.repeats, "tool_s": args.tool_s,
              "batch": "2 tasks x group 4, per_episode, up to 2 turns, 16 new tokens per turn",
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)", "runs": runs,
              "sync_steps_per_hour": med["sync"], "async_steps_per_hour": med["async"],
              "speedup": round(med["async"] / med["sync"], 2)}
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
