"""Rollout throughput: per-episode collection vs the lockstep episode loop, same process, same tasks, same tools.

Each rollout calls a tool for 3 turns and answers on the 4th (a scripted sampler that decides by the prompt,
so both collectors record the same tokens and the measurement isolates the collection loop). The tool is a
REAL HTTP endpoint on 127.0.0.1 speaking OpenAI's Agent RFT wire format (a standard-library server, like
tests/fixtures/agent_rft_tool_server.py), reached through agentrft's own HTTP endpoint tool; each call sleeps a
latency drawn from a seeded distribution keyed by (task, step), so both collectors see the same latencies:

* ``uniform``  0.5-1.5 s (mean 1 s): the jitter is what lockstep pays for, since each lockstep turn lasts as
  long as its slowest call;
* ``heavy``    0.2 s, but 3.0 s for one call in ten (a cold cache, a slow query): lockstep pays the slow call
  at almost every turn, per-episode only in the rollout that drew it.

Scenarios: ``brief`` (32 rollouts x 4 turns, all in flight, uniform latency), ``heavy`` (the same with the
heavy-tailed latency) and ``stream`` (128 rollouts, 32 in flight, heavy latency: lockstep runs them in batches
of 32 as ``agentrft eval`` chunks them, per-episode starts a rollout whenever one ends). Each sampler call
sleeps ``--sample-s`` (a batched decode step's cost; ready turns share a call in both collectors).

    .venv/bin/python bench/async_rollouts.py --json bench/results/async_rollouts.json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agentrft.config import RolloutConfig
from agentrft.models.chat_format import HermesChatFormat
from agentrft.models.loading import load_tokenizer
from agentrft.rollout.collector import run_episodes_concurrently
from agentrft.rollout.episode import run_episodes
from agentrft.rollout.sampler import Completion, SamplingParams
from agentrft.tools.environment import Environment
from agentrft.tools.http_endpoint import EndpointToolConfig, endpoint_clients, endpoint_tools_for_row
from agentrft.types import StopReason, ToolCall

TOOL_CALLS = 3
WORK_SCHEMA = {"type": "function", "function": {
    "name": "work", "description": "Do one step of the task.",
    "parameters": {"type": "object", "properties": {"step": {"type": "integer"}}, "required": ["step"]}}}


def latency(kind: str, seed: int, task: str, step: int) -> float:
    """Seconds the tool server sleeps for this call: a pure function of (kind, seed, task, step)."""
    u = random.Random(f"{seed}:{task}:{step}").random()
    if kind == "uniform":
        return 0.5 + u
    if kind == "heavy":
        return 3.0 if u < 0.1 else 0.2
    raise ValueError(kind)


def serve_function_calls(answer: Callable[[dict], tuple[float, str]]) -> ThreadingHTTPServer:
    """An Agent RFT tool server on 127.0.0.1 (a free port): POST a function_call, get a function_call_output.
    ``answer(request)`` gives the seconds to sleep first and the output text."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            sleep_s, output = answer(req)
            time.sleep(sleep_s)
            body = json.dumps({"type": "function_call_output", "call_id": req["call_id"], "id": req["id"],
                               "output": output}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256  # the default listen backlog (5) resets connections when 32 rollouts call at once

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def start_tool_server(kind: str, seed: int) -> ThreadingHTTPServer:
    """The scenario's tool server: each call sleeps its seeded latency, keyed by (task, step)."""

    def answer(req: dict) -> tuple[float, str]:
        step = json.loads(req["arguments"])["step"]
        return latency(kind, seed, req["item"]["id"], step), f"step {step} of {req['item']['id']} done"

    return serve_function_calls(answer)


class ScriptedToolUser:
    """Calls ``work`` until the prompt holds ``TOOL_CALLS`` tool results, then answers; each call sleeps
    ``sample_s``. Counts calls and the prompts they carried."""

    def __init__(self, tokenizer, cf, sample_s: float):
        self.tok, self.cf, self.sample_s = tokenizer, cf, sample_s
        self.max_context = 1 << 20
        self.calls = self.prompts = 0

    def generate(self, prompts, params: SamplingParams, on_token=None) -> list[Completion]:
        self.calls += 1
        self.prompts += len(prompts)
        time.sleep(self.sample_s)
        out = []
        for p in prompts:
            done = self.tok.decode(list(p)).count("<tool_response>")
            if done < TOOL_CALLS:
                msg = {"role": "assistant", "content": "",
                       "tool_calls": [ToolCall("work", {"step": done + 1}, id=f"call_{done + 1}").to_openai()]}
            else:
                msg = {"role": "assistant", "content": f"all {done} steps done"}
            ids = list(self.cf.assistant_tokens(msg))
            out.append(Completion(ids, [-0.1] * len(ids), "stop"))
        return out

    def release(self) -> None:
        pass


def run_scenario(name: str, rollouts: int, slots: int, kind: str, args, cf, tok) -> dict:
    server = start_tool_server(kind, args.seed)
    url = f"http://127.0.0.1:{server.server_address[1]}/work"
    configs = [EndpointToolConfig(name="work", server_url=url, max_concurrency=max(64, slots), max_retries=0)]
    clients = endpoint_clients(configs)
    rows = [{"id": f"{name}-{i}", "messages": [{"role": "user", "content": f"Task {i}: do the 3 steps."}],
             "tools": [WORK_SCHEMA]} for i in range(rollouts)]

    def make_env(row):
        return Environment.from_tools(endpoint_tools_for_row(configs, row, clients))

    config = RolloutConfig(max_turns=TOOL_CALLS + 1, max_new_tokens=64, max_total_tokens=4096, temperature=0,
                           tool_timeout_s=30)
    expected_tool_s = sum(latency(kind, args.seed, r["id"], s) for r in rows for s in range(1, TOOL_CALLS + 1))
    result = {"scenario": name, "rollouts": rollouts, "turns": TOOL_CALLS + 1, "in_flight": slots, "latency": kind,
              "tool_seconds_total": round(expected_tool_s, 2)}
    records = {}
    for mode in ("lockstep", "per_episode"):
        sampler = ScriptedToolUser(tok, cf, args.sample_s)
        t0 = time.perf_counter()
        if mode == "lockstep":  # in batches of `slots`, as agentrft eval chunks its tasks
            trajs = [t for i in range(0, rollouts, slots)
                     for t in run_episodes(rows[i : i + slots], make_env, sampler, cf, config)]
        else:
            trajs = run_episodes_concurrently(rows, make_env, sampler, cf, config, max_concurrent_episodes=slots)
        wall = time.perf_counter() - t0
        bad = [t.task_id for t in trajs if t.stop_reason != StopReason.ANSWER or t.errors
               or len(t.tool_calls) != TOOL_CALLS or any(r.error for r in t.tool_calls)]
        if bad:
            raise SystemExit(f"{name}/{mode}: rollouts that did not complete cleanly: {bad[:5]}")
        records[mode] = [t.token_ids for t in trajs]
        result[mode] = {"wall_s": round(wall, 3), "rollouts_per_s": round(rollouts / wall, 3),
                        "sampler_calls": sampler.calls, "mean_batch": round(sampler.prompts / sampler.calls, 2)}
    server.shutdown()
    result["same_tokens"] = records["lockstep"] == records["per_episode"]
    result["speedup"] = round(result["per_episode"]["rollouts_per_s"] / result["lockstep"]["rollouts_per_s"], 2)
    return result


SCENARIOS = {"brief": (32, 32, "uniform"), "heavy": (32, 32, "heavy"), "stream": (128, 32, "heavy")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenarios", default="brief,heavy,stream", help=f"comma-separated, of {sorted(SCENARIOS)}")
    ap.add_argument("--sample-s", type=float, default=0.05, help="seconds each sampler call sleeps")
    ap.add_argument("--seed", type=int, default=0, help="seeds the tool latencies")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    tok = load_tokenizer("smollm2-135m")
    cf = HermesChatFormat(tok)
    results = []
    print(f"{'scenario':<8} {'rollouts':>8} {'in flight':>9} {'latency':>8} {'lockstep s':>10} {'per-ep s':>9} "
          f"{'lock r/s':>8} {'per-ep r/s':>10} {'speedup':>7} {'batch l/p':>9}")
    for name in [s for s in re.split(r"[,\s]+", args.scenarios) if s]:
        rollouts, slots, kind = SCENARIOS[name]
        r = run_scenario(name, rollouts, slots, kind, args, cf, tok)
        results.append(r)
        ls, pe = r["lockstep"], r["per_episode"]
        print(f"{name:<8} {rollouts:>8} {slots:>9} {kind:>8} {ls['wall_s']:>10.2f} {pe['wall_s']:>9.2f} "
              f"{ls['rollouts_per_s']:>8.2f} {pe['rollouts_per_s']:>10.2f} {r['speedup']:>6.2f}x "
              f"{ls['mean_batch']:>4.1f}/{pe['mean_batch']:<4.1f}" + ("" if r["same_tokens"] else "  TOKENS DIFFER"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bench": "async_rollouts", "sample_s": args.sample_s, "seed": args.seed,
                       "python": platform.python_version(), "results": results}, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
