"""The platform server killed with ``kill -9`` mid-job: its worker dies with it, the next server resumes the job
from its latest checkpoint, and the job ends with exactly the result of an uninterrupted one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from platform_support import SIMILARITY_GRADER, jsonl, task_rows, wait_for, wait_for_checkpoints

pytestmark = pytest.mark.slow

STEPS = 5
CONFIG = {"training": {"max_steps": STEPS, "batch_size": 2, "checkpoint_interval": 1, "eval_samples": 0,
                       "cpu_matmul": "mkl"},  # two jobs compare bit for bit on one matmul library
          "rft": {"group_size": 2}, "rollout": {"max_turns": 2, "max_new_tokens": 8, "max_total_tokens": 512}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path, tiny_dir: Path, port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentrft.cli", "server", "--home", str(home), "--port", str(port),
         "--model", f"tiny={tiny_dir}"], stdout=open(log, "ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"the server did not start: {log.read_text()}")


def gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie counts as gone: it runs nothing
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.1)
    return False


def final_adapter(run_dir: Path):
    from safetensors.torch import load_file

    (latest,) = sorted((run_dir / "checkpoints").glob("step-*"))[-1:]
    return latest.name, load_file(latest / "adapter" / "adapter_model.safetensors")


def test_kill_9_mid_job_resumes_and_matches_an_uninterrupted_run(tmp_path):
    from agentrft.jobs.store import RunStore
    from agentrft.models.loading import save_tiny_model
    from agentrft.platform.db import PlatformDB

    tiny_dir = save_tiny_model(tmp_path / "tiny")
    home, port, log = tmp_path / "home", free_port(), tmp_path / "server.log"
    server = start_server(home, tiny_dir, port, log)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="local", max_retries=0, timeout=60)
        train = client.files.create(file=jsonl(task_rows()), purpose="fine-tune")

        def create():
            return client.fine_tuning.jobs.create(
                model="tiny", training_file=train.id, seed=11,
                method={"type": "reinforcement", "reinforcement": {"grader": SIMILARITY_GRADER}},
                extra_body={"agentrft": {"config": CONFIG}})

        reference = create()
        assert wait_for(client, reference.id, ("succeeded", "failed")).status == "succeeded"

        job = create()
        db = PlatformDB(home)
        run_dir = Path(db.get_job(job.id)["config"]["out_dir"])
        wait_for_checkpoints(run_dir, 2)
        worker = db.get_job(job.id)["worker_pid"]
        server.send_signal(signal.SIGKILL)
        server.wait()
        assert gone(worker), "the worker outlived its killed server"
        assert db.get_job(job.id)["status"] == "running"  # what the dead server left behind

        server = start_server(home, tiny_dir, port, log)
        done = wait_for(client, job.id, ("succeeded", "failed"))
        assert done.status == "succeeded", done.error
        assert done.fine_tuned_model == f"ft:tiny::{job.id}"
        messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data]
        assert any("server restarted" in m for m in messages)
        assert any("resumed the run from its latest checkpoint" in m for m in messages)
    finally:
        server.kill()
        server.wait()

    ref_dir = Path(db.get_job(reference.id)["config"]["out_dir"])
    with RunStore(ref_dir) as a, RunStore(run_dir) as b:
        names = ("loss", "reward_mean", "grad_norm", "tokens_mean")
        ref_m, got_m = a.metrics_frame("train"), b.metrics_frame("train")
        assert sorted(got_m) == list(range(1, STEPS + 1))
        for step in ref_m:
            for name in names:
                if name in ref_m[step]:
                    assert got_m[step][name] == ref_m[step][name], (step, name)
        assert any(e["kind"] == "resume" for e in b.events())
    ref_step, ref_weights = final_adapter(ref_dir)
    got_step, got_weights = final_adapter(run_dir)
    assert ref_step == got_step and ref_weights.keys() == got_weights.keys()
    import torch

    assert all(torch.equal(ref_weights[k], got_weights[k]) for k in ref_weights)
