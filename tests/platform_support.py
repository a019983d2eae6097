"""Shared pieces of the platform tests: data files, a served platform app, waiting for a job."""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                        "required": ["city"]}}}
CITIES = ["Oslo", "Rome", "Lima", "Cairo", "Quito", "Perth"]


def task_rows(n: int = 6) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Weather in {CITIES[i % 6]}?"}], "tools": [TOOL],
             "answer": CITIES[i % 6]} for i in range(n)]


def supervised_rows(n: int = 6) -> list[dict]:
    rows = []
    for i in range(n):
        call = {"id": f"call_{i}", "type": "function",
                "function": {"name": "get_weather", "arguments": json.dumps({"city": CITIES[i % 6]})}}
        rows.append({"messages": [{"role": "user", "content": f"Weather in {CITIES[i % 6]}?"},
                                  {"role": "assistant", "content": "", "tool_calls": [call]}], "tools": [TOOL]})
    return rows


SIMILARITY_GRADER = {"type": "text_similarity", "name": "city", "input": "{{sample.output_text}}",
                     "reference": "{{item.answer}}", "evaluation_metric": "fuzzy_match"}

SMALL_RFT = {"training": {"max_steps": 2, "batch_size": 2, "checkpoint_interval": 1, "eval_interval": 1,
                          "eval_samples": 2},
             "rft": {"group_size": 2}, "rollout": {"max_turns": 1, "max_new_tokens": 6, "max_total_tokens": 512}}
SMALL_SFT = {"training": {"max_steps": 2, "batch_size": 2, "checkpoint_interval": 1}}


def jsonl(rows: list[dict]) -> io.BytesIO:
    buf = io.BytesIO("".join(json.dumps(r) + "\n" for r in rows).encode())
    buf.name = "data.jsonl"
    return buf


@contextlib.contextmanager
def served_platform(home: Path, tiny_dir: Path, **settings):
    """The platform app over ``home`` with the tiny model as ``tiny``, served on 127.0.0.1; yields
    ``(app, base_url)``."""
    from agentrft.platform.app import PlatformSettings, create_platform_app
    from agentrft.serving import serve_in_background

    app = create_platform_app(PlatformSettings(home=home, base_models={"tiny": str(tiny_dir)}, **settings))
    with serve_in_background(app) as base_url:
        yield app, base_url


def wait_for(client, job_id: str, statuses: tuple[str, ...], timeout_s: float = 240.0):
    deadline = time.time() + timeout_s
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        if time.time() > deadline:
            events = [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=50).data]
            raise AssertionError(f"job {job_id} is {job.status} after {timeout_s} s; events: {events}")
        time.sleep(0.3)


def wait_for_checkpoints(run_dir: Path, n: int, timeout_s: float = 240.0) -> None:
    from agentrft.jobs.store import RunStore

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if (run_dir / "run.db").is_file():
            with RunStore(run_dir) as store:
                if len(store.checkpoints()) >= n:  # recorded (retention may have deleted older ones)
                    return
        time.sleep(0.2)
    raise AssertionError(f"{run_dir} has recorded fewer than {n} checkpoints after {timeout_s} s")
