"""Ray rollout workers (``runtime.backend: ray``): the same run as in process, and a worker killed mid-step.

One local Ray cluster serves the whole module (starting one costs seconds). The runs train the tiny random
model on the toy environment, whose reward is the share of even sampled token ids: equal rewards mean equal
sampled tokens. Against one ``agentrft serve`` (the trainer's adapter pushed to it), the in-process
``rollout.mode: per_episode`` run and the Ray run send the same requests with the same seeds, so every
step's rewards agree; with ``sampler.backend: local`` the Ray workers sample the trainer's own policy through
the loopback endpoint and draw the same tokens. A worker killed while it holds rollouts costs nothing: its
rollouts are dispatched again and each (task, sample) comes back once.
"""

from __future__ import annotations

import functools
import threading
import time

import pytest
import ray

from agentrft.config import RolloutConfig, load_config
from agentrft.config_sections import RuntimeConfig
from agentrft.envs.registry import get_env
from agentrft.errors import ConfigError
from agentrft.jobs.store import RunStore
from agentrft.models.chat_format import get_chat_format
from agentrft.models.loading import save_tiny_model
from agentrft.rollout.sampler import Completion
from agentrft.runtime import RayRollouts, RayUnavailable, WorkerSpec, connect_ray
from agentrft.serving import serve_in_background
from agentrft.train.rollout_workers import worker_tasks
from agentrft.train.runner import run_job
from lora_support import lora_server_app

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def ray_cluster():
    """One local cluster for the module; the runtimes find it connected and leave it up."""
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="warning")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """``(base_url, lora_root)``: ``agentrft serve`` over the base weights with LoRA hot-swap."""
    root = tmp_path_factory.mktemp("lora-root")
    app = lora_server_app(model_dir, root)
    with serve_in_background(app) as base_url:
        yield base_url, root


def rft_config(model_dir, out_dir, **sections):
    cfg = {"method": "rft", "model": str(model_dir), "out_dir": str(out_dir), "data": {"env": "toy"},
           "lora": {"r": 4},
           "training": {"max_steps": 2, "batch_size": 2, "eval_samples": 0, "checkpoint_interval": 100,
                        "cpu_matmul": "mkl"},
           "rft": {"group_size": 4}, "optim": {"learning_rate": 1e-2},
           "rollout": {"max_turns": 1, "max_new_tokens": 8, "temperature": 1.0, "mode": "per_episode"}}
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return load_config(cfg)


def _steps(run_dir) -> tuple[list[float], list[list[list[int]]], dict]:
    """Per step: the mean reward, each rollout's token ids (task-major), and the train metrics."""
    with RunStore(run_dir) as store:
        frame = store.metrics_frame("train")
        tokens = [[t["token_ids"] for t in store.trajectories(step=s)] for s in sorted(frame)]
        return [frame[s]["reward_mean"] for s in sorted(frame)], tokens, frame


@pytest.mark.slow
def test_a_ray_run_matches_the_in_process_run(ray_cluster, model_dir, server, tmp_path):
    base_url, root = server
    remote = {"backend": "openai_compat", "url": base_url, "timeout_s": 60}
    runs = {
        "in_process": rft_config(model_dir, tmp_path / "a", sampler={**remote, "model": "run-a",
                                                                      "sync_dir": str(root / "a")}),
        "ray_loopback": rft_config(model_dir, tmp_path / "c", runtime={"backend": "ray", "rollout_workers": 2}),
    }
    got = {}
    for name, cfg in runs.items():
        assert run_job(cfg, log=lambda s: None).status == "completed", name
        got[name] = _steps(cfg.out_dir)
    want_rewards, want_tokens, _ = got["in_process"]
    assert len(want_rewards) == 2 and len(want_tokens[0]) == 8
    # sampler.backend local on Ray: the workers sample the trainer's own weights through its loopback endpoint
    # (a remote sampler on Ray is the same client pointed at sampler.url); one Ray run keeps the suite short
    for name in ("ray_loopback",):
        rewards, tokens, frame = got[name]
        assert rewards == pytest.approx(want_rewards, abs=1e-6), name
        assert tokens == want_tokens, name  # the same sampled tokens, in the same (task-major) order
        assert all(frame[s]["runtime/rollout_workers"] == 2 and frame[s]["runtime/redispatched"] == 0
                   for s in frame), name
    assert ray.is_initialized()  # the runs left the module's cluster up


class SlowSampler:
    """Answers every prompt with the same short text after ``delay_s``: rollouts in flight long enough to be
    killed. ``calls`` is set at the first call."""

    def __init__(self, answer: list[int], delay_s: float = 0.3):
        self.answer, self.delay_s, self.max_context = answer, delay_s, 4096
        self.calls = threading.Event()

    def generate(self, prompts, params, on_token=None):
        self.calls.set()
        time.sleep(self.delay_s)
        return [Completion(list(self.answer), [-0.5] * len(self.answer), "stop") for _ in prompts]

    def release(self):
        pass


@pytest.mark.slow
def test_a_worker_killed_mid_step_costs_nothing(ray_cluster, model_dir, tokenizer, tmp_path):
    cfg = rft_config(model_dir, tmp_path / "kill")
    chat_format = get_chat_format(tokenizer, "hermes")
    answer = tokenizer.encode("Hello there.", add_special_tokens=False) + list(chat_format.stop_token_ids[:1])
    sampler = SlowSampler(answer)
    build = functools.partial(worker_tasks, cfg.model_dump(mode="json"), None)
    rows = get_env("toy").load_split("train")[:4]
    runtime = RuntimeConfig(backend="ray", rollout_workers=2, max_task_retries=1)
    rollouts = RayRollouts(lambda endpoint: WorkerSpec(build, chat_format, endpoint), runtime, concurrency=2,
                           serve=sampler)
    try:
        victim = rollouts.workers[0]

        def kill() -> None:  # once rollouts are sampling: worker 0 holds two of them, waiting on the sampler
            sampler.calls.wait(30)
            ray.kill(victim)

        killer = threading.Thread(target=kill)
        killer.start()
        trajs, grades = rollouts.collect(rows, RolloutConfig(max_turns=1, max_new_tokens=8, seed=7),
                                         samples_per_task=2)
        killer.join()
        metrics = rollouts.take_metrics()
        assert victim not in rollouts.workers and len(rollouts.workers) == 2  # a fresh actor in its place
    finally:
        rollouts.close()
    assert [(t.task_id, t.group_index) for t in trajs] == [(r["id"], k) for r in rows for k in range(2)]
    assert len({t.trace_id for t in trajs}) == 8  # each rollout once: none lost, none counted twice
    assert not any(t.is_infra_failure for t in trajs)
    assert all(t.num_sampled_tokens == len(answer) for t in trajs)
    assert len(grades) == 8 and not any(g.has_error for g in grades)
    assert metrics["runtime/redispatched"] >= 1 and metrics["runtime/worker_restarts"] == 1


def test_ray_runtime_config_errors_are_clear(monkeypatch, tmp_path):
    with pytest.raises(RayUnavailable, match=r"cannot reach the Ray cluster at '127\.0\.0\.1:1' \(runtime\.address\)"):
        connect_ray(RuntimeConfig(backend="ray", address="127.0.0.1:1"))
    monkeypatch.setenv("RAY_ADDRESS", "ray://127.0.0.1:1")
    with pytest.raises(RayUnavailable, match=r"'ray://127\.0\.0\.1:1' \(RAY_ADDRESS\)"):
        connect_ray(RuntimeConfig(backend="ray"))
    with pytest.raises(ConfigError, match="rft.asynchronous"):
        rft_config("tiny", tmp_path, runtime={"backend": "ray"}, rft={"asynchronous": True},
                   sampler={"backend": "openai_compat", "url": "http://127.0.0.1:1/v1", "model": "m"})
