"""Dynamic sampling (``rft.resample_rounds``): groups without a signal are topped up with fresh tasks,
deterministically, so the update still trains on ``batch_size`` informative groups."""

from __future__ import annotations

import copy

import pytest

from agentrft.config import load_config
from agentrft.envs.toy import even_token_share
from agentrft.jobs.store import RunStore
from agentrft.types import Grade


def mostly_flat(traj, row) -> Grade:
    """Half the tasks score a constant (a group of them carries no signal); the others vary with the sample."""
    if int(row["id"].rsplit("-", 1)[1]) % 2:
        return Grade(reward=0.5)
    return even_token_share(traj, row)


def run(tmp_path, tiny_model, name: str, rounds: int, steps: int = 2) -> dict[int, dict]:
    from agentrft.train.runner import run_job

    model, tok = copy.deepcopy(tiny_model[0]), tiny_model[1]
    cfg = load_config({"method": "rft", "model": "unused", "out_dir": str(tmp_path / name), "data": {"env": "toy"},
                       "lora": {"enabled": False}, "rft": {"group_size": 4, "resample_rounds": rounds},
                       "training": {"max_steps": steps, "batch_size": 4, "eval_samples": 0, "checkpoint_interval": 1},
                       "optim": {"learning_rate": 1e-3, "micro_batch_size": 8},
                       "rollout": {"max_turns": 1, "max_new_tokens": 8, "temperature": 1.0}})
    run_job(cfg, model=model, tokenizer=tok, grade=mostly_flat, log=lambda s: None)
    with RunStore(tmp_path / name) as store:
        return store.metrics_frame("train")


@pytest.mark.slow
def test_flat_groups_are_replaced_up_to_the_batch(tmp_path, tiny_model):
    plain = run(tmp_path, tiny_model, "plain", rounds=0)
    topped = run(tmp_path, tiny_model, "topped", rounds=6)
    for step in (1, 2):
        assert plain[step]["trained_rollouts"] < 4 * 4  # without it, flat groups shrink the update
        assert "resampled_tasks" not in plain[step]
        assert topped[step]["resampled_tasks"] > 0
        assert topped[step]["trained_rollouts"] == 4 * 4  # 4 informative groups of 4
        assert topped[step]["zero_variance_groups"] >= plain[step]["zero_variance_groups"]


@pytest.mark.slow
def test_resampled_steps_are_a_pure_function_of_seed_and_step(tmp_path, tiny_model):
    a = run(tmp_path, tiny_model, "a", rounds=3, steps=1)
    b = run(tmp_path, tiny_model, "b", rounds=3, steps=1)
    assert a[1]["reward_mean"] == b[1]["reward_mean"] and a[1]["resampled_tasks"] == b[1]["resampled_tasks"]
    with RunStore(tmp_path / "a") as sa, RunStore(tmp_path / "b") as sb:
        ids = lambda s: [(t["task_id"], t["token_ids"]) for t in s.trajectories()]  # noqa: E731
        assert ids(sa) == ids(sb) and len(ids(sa)) > 4 * 4
