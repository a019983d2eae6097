"""The TRL comparison benchmark's task: rows, reward and the agentrft environment it registers."""

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import grpo_vs_trl as bench  # noqa: E402

from agentrft.envs.registry import get_env  # noqa: E402
from agentrft.types import Trajectory  # noqa: E402


def test_rows_are_seeded_two_digit_sums():
    rows = bench.make_rows()
    assert len(rows) == 64 and rows == bench.make_rows()
    for r in rows:
        q = r["messages"][-1]["content"]
        a, b = q.removeprefix("What is ").split("?")[0].split("+")
        assert 10 <= int(a) <= 99 and 10 <= int(b) <= 99 and int(r["answer"]) == int(a) + int(b)


def test_addition_reward():
    assert bench.addition_reward("The answer is 57.", "57") == 1.0
    assert bench.addition_reward("58", "57") == 0.2
    assert bench.addition_reward("fifty-seven", "57") == 0.0
    assert bench.addition_reward("157", "57") == 0.2  # a number that merely contains the digits is wrong


def test_env_spec_grades_the_final_answer():
    spec = get_env("grpo_vs_trl:env_spec")
    row = spec.load_split("train")[0]
    traj = Trajectory(task_id=row["id"], messages=row["messages"] + [{"role": "assistant", "content": row["answer"]}])
    assert spec.grade(traj, row).reward == 1.0


def test_agentrft_side_of_the_benchmark_runs_with_a_tiny_model(tmp_path, tiny_model):
    import copy

    from agentrft.jobs.store import RunStore
    from agentrft.train.runner import run_job

    cfg = bench.agentrft_config(tmp_path, model="unused").model_copy(
        update={"training": bench.agentrft_config(tmp_path).training.model_copy(update={"max_steps": 1})})
    model, tok = tiny_model
    result = run_job(cfg, model=copy.deepcopy(model), tokenizer=tok, log=lambda s: None)
    (step,) = RunStore(result.run_dir).metrics_frame("train").values()
    assert step["trained_rollouts"] == bench.COMPLETIONS_PER_STEP  # zero-variance groups are trained, as TRL does
    assert 0 < step["sampled_tokens_mean"] <= bench.MAX_NEW_TOKENS


def test_the_gpu_bench_jobs_config_loads(tmp_path):
    """bench/gpu/vllm_vs_trl.py has not run on a GPU (no device lent); its agentrft config must at least load."""
    import importlib.util

    from agentrft.config import load_config

    spec = importlib.util.spec_from_file_location("vllm_vs_trl", BENCH / "gpu" / "vllm_vs_trl.py")
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    cfg = load_config(gpu.agentrft_job(tmp_path, 8000))
    assert cfg.sampler.backend == "vllm" and cfg.lora.enabled and cfg.training.device == "cuda"
    assert cfg.rft.group_size * cfg.training.batch_size == bench.COMPLETIONS_PER_STEP
