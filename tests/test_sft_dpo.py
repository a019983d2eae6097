"""SFT and DPO on the same token records as RFT: only assistant tokens trained, loss falls,
preferences learned; pair mining and the data order are pure functions."""

from __future__ import annotations

import copy

import pytest

from agentrft.config import load_config
from agentrft.envs.registry import get_env
from agentrft.jobs.store import RunStore
from agentrft.models.chat_format import HermesChatFormat
from agentrft.rollout.episode import tools_for_row
from agentrft.train.demonstrations import cycle_batches, demonstration_trajectory, mine_pairs, pairs_from_records
from agentrft.types import StopReason, Trajectory


def finance_demo(cf, policy="verbose"):
    env = get_env("finance")
    row = env.load_split("train")[0]
    schemas = [t.schema() for t in tools_for_row(env.make_env(row), row)]
    return env.oracles[policy](row), schemas


def test_demonstration_record_trains_only_assistant_tokens(tokenizer):
    cf = HermesChatFormat(tokenizer)
    messages, schemas = finance_demo(cf)
    traj = demonstration_trajectory(messages, schemas, cf)
    traj.validate()
    assert traj.token_ids == cf.render(traj.messages, schemas)[: len(traj.token_ids)]
    sampled_text = cf.decode([t for t, k in zip(traj.token_ids, traj.token_kinds) if k == "sampled"])
    assistant = [m for m in messages if m["role"] == "assistant"]
    assert traj.turns == len(assistant)
    assert "<tool_call>" in sampled_text and "tool_response" not in sampled_text  # tool output never trained
    assert "You answer questions" not in sampled_text  # nor the prompt


def test_mine_pairs_best_vs_worst():
    t = [Trajectory(task_id=str(i), messages=[]) for i in range(6)]
    groups = [[(t[0], 0.1), (t[1], 0.9), (t[2], 0.5)], [(t[3], 0.5), (t[4], 0.55)], [(t[5], 1.0)]]
    pairs = mine_pairs(groups, min_margin=0.1)
    assert pairs == [(t[1], t[0])]  # second group's margin is too small, third has one rollout


def test_data_order_is_a_pure_function_of_seed_and_step():
    items = list(range(10))
    epoch = [x for step in range(1, 6) for x in cycle_batches(items, 2, step, seed=3)]
    assert sorted(epoch) == items  # one epoch visits every item once
    assert cycle_batches(items, 2, 4, seed=3) == cycle_batches(items, 2, 4, seed=3)
    assert epoch != [x for step in range(1, 6) for x in cycle_batches(items, 2, step, seed=4)]


@pytest.mark.slow
def test_sft_loss_falls_on_demonstrations(tmp_path, tiny_model):
    from agentrft.train.runner import run_job

    model, tok = copy.deepcopy(tiny_model[0]), tiny_model[1]
    cfg = load_config({"method": "sft", "model": "unused", "out_dir": str(tmp_path / "sft"),
                       "data": {"env": "finance", "demonstrations": "efficient", "limit_train": 2, "limit_eval": 1},
                       "lora": {"enabled": False},
                       "training": {"max_steps": 4, "batch_size": 2, "eval_interval": 4, "eval_samples": 1},
                       "optim": {"learning_rate": 5e-3, "micro_batch_size": 2},
                       "rollout": {"max_turns": 1, "max_new_tokens": 4}})
    run_job(cfg, model=model, tokenizer=tok, log=lambda s: None)
    losses = [m["value"] for m in RunStore(tmp_path / "sft").metrics("loss", "train")]
    assert len(losses) == 4 and losses[-1] < 0.9 * losses[0], losses


@pytest.mark.slow
def test_dpo_learns_the_preference(tmp_path, tiny_model):
    from agentrft.train.runner import run_job

    model, tok = copy.deepcopy(tiny_model[0]), tiny_model[1]
    cfg = load_config({"method": "dpo", "model": "unused", "out_dir": str(tmp_path / "dpo"),
                       "data": {"env": "finance", "demonstrations": "efficient", "rejected_demonstrations": "verbose",
                                "limit_train": 2, "limit_eval": 1},
                       "lora": {"enabled": True, "r": 8},
                       "training": {"max_steps": 5, "batch_size": 2, "eval_interval": 5, "eval_samples": 1},
                       "optim": {"learning_rate": 5e-3},
                       "dpo": {"beta": 0.1},
                       "rollout": {"max_turns": 1, "max_new_tokens": 4}})
    run_job(cfg, model=model, tokenizer=tok, log=lambda s: None)
    store = RunStore(tmp_path / "dpo")
    losses = [m["value"] for m in store.metrics("loss", "train")]
    margins = [m["value"] for m in store.metrics("reward_margin", "train")]
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at the start: -log sigmoid(0)
    assert losses[-1] < losses[0] and margins[-1] > 0, (losses, margins)


def _logged_group(cf, step: int, rewards: list[float], infra_failure_at: int | None = None) -> list[dict]:
    """An RFT-style group for one task: efficient and verbose rollouts with the given rewards."""
    env = get_env("finance")
    row = env.load_split("train")[0]
    schemas = [t.schema() for t in tools_for_row(env.make_env(row), row)]
    out = []
    for i, reward in enumerate(rewards):
        policy = "efficient" if i % 2 == 0 else "verbose"
        traj = demonstration_trajectory(env.oracles[policy](row), schemas, cf, task_id=str(row["id"]))
        traj.group_index = i
        if i == infra_failure_at:
            traj.stop_reason = StopReason.INFRA_ERROR
        out.append({**traj.to_dict(), "grade": {"reward": reward}, "reward": reward, "step": step})
    return out


def test_pairs_from_records_group_by_step_and_task_and_skip_failures(tokenizer):
    cf = HermesChatFormat(tokenizer)
    recs = (_logged_group(cf, 1, [0.2, 0.9, 0.5]) + _logged_group(cf, 2, [0.5, 0.55])
            + _logged_group(cf, 3, [1.0, 0.0], infra_failure_at=1) + [{**_logged_group(cf, 4, [0.0])[0], "reward": None}])
    pairs = pairs_from_records(recs, min_margin=0.1)
    # step 1: best (0.9, verbose) vs worst (0.2, efficient); step 2's spread is too small; step 3's worst is an
    # infra failure, leaving one rollout; step 4's record has no reward
    assert len(pairs) == 1
    chosen, rejected = pairs[0]
    assert chosen.group_index == 1 and rejected.group_index == 0
    assert chosen.token_ids == recs[1]["token_ids"] and chosen.token_kinds == recs[1]["token_kinds"]


@pytest.mark.slow
def test_dpo_trains_on_pairs_mined_from_a_runs_groups(tmp_path, tiny_model):
    from agentrft.errors import ConfigError
    from agentrft.train.runner import run_job

    model, tok = copy.deepcopy(tiny_model[0]), tiny_model[1]
    cf = HermesChatFormat(tok)
    with RunStore(tmp_path / "rft") as src:
        src.create_run("rft-1", "rft", {"model": "unused"}, {})
        for step in (1, 2):
            recs = _logged_group(cf, step, [0.1, 1.0, 0.4, 0.9])
            src.log_trajectories(step, recs)
        src.log_trajectories(2, _logged_group(cf, 2, [0.0, 1.0]), split="validation")  # never mined
    base = {"method": "dpo", "model": "unused", "out_dir": str(tmp_path / "dpo"),
            "data": {"env": "finance", "pairs_from_run": str(tmp_path / "rft"), "limit_eval": 1},
            "lora": {"enabled": True, "r": 8},
            "training": {"max_steps": 3, "batch_size": 2, "eval_interval": 3, "eval_samples": 1},
            "optim": {"learning_rate": 5e-3}, "dpo": {"beta": 0.1}, "rollout": {"max_turns": 1, "max_new_tokens": 4}}
    run_job(load_config(base), model=model, tokenizer=tok, log=lambda s: None)
    with RunStore(tmp_path / "dpo") as store:
        losses = [m["value"] for m in store.metrics("loss", "train")]
        assert "pairs" in store.get_run()["hashes"]
    assert len(losses) == 3 and losses[0] == pytest.approx(0.6931, abs=1e-3) and losses[-1] < losses[0], losses

    wrong_model = {**base, "model": "smollm2-135m", "out_dir": str(tmp_path / "dpo2")}
    with pytest.raises(ConfigError, match="same tokenizer"):
        run_job(load_config(wrong_model), model=copy.deepcopy(tiny_model[0]), tokenizer=tok, log=lambda s: None)
    no_spread = {**base, "out_dir": str(tmp_path / "dpo3"),
                 "data": {**base["data"], "pairs_min_margin": 2.0}}
    with pytest.raises(ConfigError, match="pairs_min_margin"):
        run_job(load_config(no_spread), model=copy.deepcopy(tiny_model[0]), tokenizer=tok, log=lambda s: None)


def test_dpo_pair_sources_are_exclusive_and_required():
    from agentrft.errors import ConfigError

    base = {"method": "dpo", "model": "unused", "data": {"env": "finance"}}
    with pytest.raises(ConfigError, match="pairs_from_run"):
        load_config(base)
    with pytest.raises(ConfigError, match="one source"):
        load_config({**base, "data": {"env": "finance", "pairs_file": "p.jsonl", "pairs_from_run": "runs/rft"}})
