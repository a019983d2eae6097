"""Training that learns nothing says so: per-step warnings, the ``no_signal`` metrics and events, the
``completed_no_signal`` status, ``training.stop_after_no_signal_steps``, and DPO pair mining that never pairs
a rollout with itself or with an equal-reward twin."""

from __future__ import annotations

import copy

import pytest

from agentrft.config import Method, load_config
from agentrft.envs.toy import even_token_share
from agentrft.jobs.store import RUN_STATUSES, RunStore
from agentrft.train.demonstrations import mine_pairs
from agentrft.train.no_signal import no_signal_reason, run_warning
from agentrft.types import Grade, Trajectory


def constant(traj, row) -> Grade:
    """Every rollout scores the same: no group ever has a reward spread."""
    return Grade(reward=0.5)


def rft_config(out_dir, steps: int, **training) -> dict:
    return {"method": "rft", "model": "unused", "out_dir": str(out_dir), "data": {"env": "toy"},
            "lora": {"enabled": False}, "rft": {"group_size": 2},
            "training": {"max_steps": steps, "batch_size": 2, "eval_samples": 0, "checkpoint_interval": 1,
                         **training},
            "optim": {"learning_rate": 1e-3}, "rollout": {"max_turns": 1, "max_new_tokens": 6, "temperature": 1.0}}


def test_an_all_equal_reward_rft_run_ends_completed_no_signal_with_warnings(tmp_path, tiny_model):
    from agentrft.train.runner import run_job

    lines: list[str] = []
    result = run_job(load_config(rft_config(tmp_path / "run", steps=2)), model=copy.deepcopy(tiny_model[0]),
                     tokenizer=tiny_model[1], grade=constant, log=lines.append)
    assert result.status == "completed_no_signal" and result.no_signal_steps == 2
    assert "no step of 2 had a learning signal" in result.warning and "constant reward" in result.warning
    for step in (1, 2):
        assert any(line.startswith(f"warning: step {step} had no learning signal: no group's rewards differed")
                   for line in lines), lines
    with RunStore(tmp_path / "run") as store:
        run = store.get_run()
        assert run["status"] == "completed_no_signal" and "never updated" in run["message"]
        frame = store.metrics_frame("train")
        assert [frame[s]["no_signal"] for s in (1, 2)] == [1.0, 1.0]
        assert [frame[s]["no_signal_steps"] for s in (1, 2)] == [1.0, 2.0]
        assert [frame[s]["trained_rollouts"] for s in (1, 2)] == [0.0, 0.0]
        assert [e["step"] for e in store.events("no_signal")] == [1, 2]


def test_stop_after_no_signal_steps_stops_the_run_with_a_message(tmp_path, tiny_model):
    from agentrft.train.runner import TrainingStopped, run_job

    cfg = load_config(rft_config(tmp_path / "run", steps=6, stop_after_no_signal_steps=2))
    with pytest.raises(TrainingStopped, match="2 steps in a row without a learning signal"):
        run_job(cfg, model=copy.deepcopy(tiny_model[0]), tokenizer=tiny_model[1], grade=constant, log=lambda s: None)
    with RunStore(tmp_path / "run") as store:
        run = store.get_run()
        assert run["status"] == "failed" and "stop_after_no_signal_steps" in run["message"]
        assert sorted(store.metrics_frame("train")) == [1, 2]  # stopped after the second, not at the sixth


def test_a_run_with_a_signal_completes_as_before(tmp_path, tiny_model):
    from agentrft.train.runner import run_job

    result = run_job(load_config(rft_config(tmp_path / "run", steps=1)), model=copy.deepcopy(tiny_model[0]),
                     tokenizer=tiny_model[1], grade=even_token_share, log=lambda s: None)
    with RunStore(tmp_path / "run") as store:
        frame = store.metrics_frame("train")
        assert store.get_run()["status"] == "completed"
    assert frame[1]["trained_rollouts"] > 0 and frame[1]["no_signal"] == 0.0  # toy rewards vary within a group
    assert result.status == "completed" and result.warning is None


def test_each_method_names_its_no_signal_step():
    same = Trajectory(task_id="t", messages=[], token_ids=[1, 2, 3], token_kinds=["prompt", "sampled", "sampled"])
    other = Trajectory(task_id="t", messages=[], token_ids=[1, 2, 4], token_kinds=["prompt", "sampled", "sampled"])
    twin = copy.deepcopy(same)
    step = {"loss": 0.6931, "skipped": 0.0, "grad_norm": 0.0}
    assert "same tokens" in no_signal_reason(Method.DPO, [(same, same), (same, twin)], step)
    assert no_signal_reason(Method.DPO, [(same, twin), (same, other)], {**step, "grad_norm": 0.3}) is None
    assert "no trainable" in no_signal_reason(Method.SFT, [same], {"loss": 0.0, "skipped": 0.0, "tokens_trained": 0.0})
    assert "exactly zero" in no_signal_reason(Method.RFT, [], {"trained_rollouts": 8.0, "grad_norm": 0.0})
    assert no_signal_reason(Method.RFT, [], {"trained_rollouts": 0.0, "skipped": 1.0}) is None  # a bad step
    assert "1 of 3 steps" in run_warning(Method.RFT, 3, 1, 2) and run_warning(Method.RFT, 3, 0, 3) is None
    assert "completed_no_signal" in RUN_STATUSES


def test_mined_pairs_never_pair_a_rollout_with_itself_or_an_equal_reward_twin():
    def traj(i: int, tokens: list[int]) -> Trajectory:
        return Trajectory(task_id=str(i), messages=[], token_ids=tokens, token_kinds=["sampled"] * len(tokens))

    a, b, a_twin, c = traj(0, [5, 6]), traj(1, [5, 7]), traj(2, [5, 6]), traj(3, [8])
    groups = [
        [(a, 0.5), (b, 0.5), (c, 0.5)],  # all tied: max and min are the same rollout
        [(a, 1.0), (a_twin, 1.0)],  # an equal-reward twin
        [(a, 1.0), (a_twin, 0.0)],  # the same tokens scored differently (a noisy grader): still no preference
        [(a, 1.0), (a_twin, 0.0), (b, 0.4)],  # ... so the lowest *different* rollout is the rejected one
    ]
    pairs = mine_pairs(groups, min_margin=0.0)
    assert pairs == [(a, b)]
    assert all(chosen is not rejected for chosen, rejected in pairs)
