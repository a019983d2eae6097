"""Training through the real CLI with a tiny model: a reward that rises, exact resume after kill -9,
non-finite steps skipped, and config errors caught at load time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from agentrft.config import load_config
from agentrft.errors import ConfigError
from agentrft.jobs.checkpoint import load_latest_checkpoint
from agentrft.jobs.store import RunStore

AGENTRFT = [sys.executable, "-m", "agentrft.cli"]

# The toy environment rewards the share of even token ids; at temperature 0.1 a
# tiny random model's choices concentrate on a few tokens per context, so a few
# policy-gradient steps move the reward from ~0.5 to ~1.
RFT_CONFIG = {
    "method": "rft",
    "data": {"env": "toy"},
    "lora": {"enabled": False},
    "training": {"max_steps": 8, "batch_size": 2, "eval_interval": 4, "eval_samples": 4, "checkpoint_interval": 1},
    "rft": {"group_size": 4},
    "optim": {"learning_rate": 0.01, "micro_batch_size": 8},
    "rollout": {"max_turns": 1, "max_new_tokens": 12, "temperature": 0.1},
}


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    from agentrft.models.loading import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def write_config(path: Path, model_dir: Path, out_dir: Path, **overrides) -> Path:
    cfg = json.loads(json.dumps(RFT_CONFIG))
    cfg.update(model=str(model_dir), out_dir=str(out_dir))
    for key, value in overrides.items():
        section, name = key.split("__")
        cfg[section][name] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*AGENTRFT, *args], capture_output=True, text=True, timeout=timeout)


def train_rewards(run_dir: Path) -> list[float]:
    store = RunStore(run_dir)
    frame = store.metrics_frame("train")
    store.close()
    return [frame[s]["reward_mean"] for s in sorted(frame)]


@pytest.mark.slow
def test_rft_reward_rises_through_the_cli(tmp_path, tiny_model_dir):
    cfg = write_config(tmp_path / "rft.yaml", tiny_model_dir, tmp_path / "run")
    proc = run_cli("train", str(cfg))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rewards = train_rewards(tmp_path / "run")
    assert len(rewards) == 8
    # Golden curve with tolerance: starts near chance, ends near the ceiling.
    assert sum(rewards[:2]) / 2 < 0.75, rewards
    assert sum(rewards[-3:]) / 3 > 0.9, rewards
    store = RunStore(tmp_path / "run")
    run = store.get_run()
    assert run["status"] == "completed" and run["method"] == "rft"
    assert run["resolved_config"]["rft"]["group_size"] == 4
    assert {"dataset", "grader", "base_model", "config"} <= set(run["hashes"])
    trajs = store.trajectories(step=1)
    assert len(trajs) == 8 and all("reward" in t for t in trajs)
    val = store.metrics_frame("validation")
    assert sorted(val) == [4, 8]
    # the validation rollouts behind those figures are stored too, graded, apart from the training samples
    val_trajs = store.trajectories(split="validation")
    assert sorted({t["step"] for t in val_trajs}) == [4, 8]
    assert all("grade" in t and t["split"] == "validation" for t in val_trajs)
    at8 = [t["reward"] for t in val_trajs if t["step"] == 8]
    assert sum(at8) / len(at8) == pytest.approx(val[8]["reward_mean"])
    train = store.metrics_frame("train")
    for key in ("entropy", "clip_fraction", "grad_norm", "sampling_s", "grading_s", "training_s", "reward_std"):
        assert key in train[1], key
    assert train[1]["entropy"] > 0
    assert "mean reward" in proc.stdout


def _train_until_killed(cfg: Path, run_dir: Path, kill_after_step: int) -> None:
    proc = subprocess.Popen([*AGENTRFT, "train", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            latest = run_dir / "checkpoints" / "latest"
            if latest.exists() and int(latest.read_text().strip().split("-")[-1]) >= kill_after_step:
                break
            if proc.poll() is not None:
                pytest.fail("training finished before it could be killed")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()


@pytest.mark.slow
def test_kill9_then_resume_matches_uninterrupted_run(tmp_path, tiny_model_dir):
    # Two independent starts must compute with the same matmul library: ``auto`` times both at each start
    # and may pick differently on a busy machine (a resume reuses its own start's pick: tested below).
    steps = {"training__max_steps": 6, "training__eval_interval": 6, "training__cpu_matmul": "mkl"}
    full = write_config(tmp_path / "full.yaml", tiny_model_dir, tmp_path / "full", **steps)
    assert run_cli("train", str(full)).returncode == 0

    crash = write_config(tmp_path / "crash.yaml", tiny_model_dir, tmp_path / "crash", **steps)
    _train_until_killed(crash, tmp_path / "crash", kill_after_step=2)
    killed_at = load_latest_checkpoint(tmp_path / "crash").step
    assert 2 <= killed_at < 6
    again = run_cli("train", str(crash))  # without --resume: refuses to overwrite the run
    assert again.returncode != 0 and "--resume" in again.stderr
    proc = run_cli("train", str(crash), "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"continuing after step {killed_at}" in proc.stdout

    a, b = RunStore(tmp_path / "full"), RunStore(tmp_path / "crash")
    for step in range(killed_at + 1, 7):
        ids_a = [(t["task_id"], t["group_index"], t["token_ids"]) for t in a.trajectories(step=step)]
        ids_b = [(t["task_id"], t["group_index"], t["token_ids"]) for t in b.trajectories(step=step)]
        assert ids_a == ids_b, f"step {step} sampled differently after resume"
    assert train_rewards(tmp_path / "full") == train_rewards(tmp_path / "crash")
    from safetensors.torch import load_file

    final_a = load_file(tmp_path / "full/checkpoints/step-000006/model.safetensors")
    final_b = load_file(tmp_path / "crash/checkpoints/step-000006/model.safetensors")
    assert final_a.keys() == final_b.keys()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a), "parameters differ after resume"
    assert any(e["kind"] == "resume" for e in b.events())


def test_nonfinite_loss_skips_update_and_stops_after_k(tmp_path, tiny_model, monkeypatch):
    import copy

    import agentrft.train.rft as rft
    from agentrft.train.runner import TrainingStopped, run_job

    real_loss = rft.policy_loss

    def nan_loss(*args, **kwargs):  # what a numerically broken step produces
        out = real_loss(*args, **kwargs)
        out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(rft, "policy_loss", nan_loss)
    model, tok = tiny_model
    model = copy.deepcopy(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = load_config({**RFT_CONFIG, "model": "unused", "out_dir": str(tmp_path / "nan"),
                       "training": {**RFT_CONFIG["training"], "max_bad_steps": 2, "max_steps": 5}})
    with pytest.raises(TrainingStopped, match="non-finite"):
        run_job(cfg, model=model, tokenizer=tok, log=lambda s: None)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), f"{n} changed by a skipped step"
    store = RunStore(tmp_path / "nan")
    assert len(store.events("nonfinite_skip")) == 2
    assert store.get_run()["status"] == "failed"
    assert [m["value"] for m in store.metrics("skipped")] == [1.0, 1.0]


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"training\.max_stpes: unknown key"):
        load_config({"method": "rft", "training": {"max_stpes": 3}})
    with pytest.raises(ConfigError, match="method"):
        load_config({"method": "ppo"})
    with pytest.raises(ConfigError, match="dpo.*needs"):
        load_config({"method": "dpo"})
    with pytest.raises(ConfigError, match="clip_eps_high"):
        load_config({"method": "rft", "rft": {"loss": "dapo", "clip_eps_low": 0.3, "clip_eps_high": 0.2}})
    with pytest.raises(ConfigError, match="tools"):
        load_config({"method": "rft", "tools": {"endpoints": []}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: [rft\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_openai_hyperparameters_map_onto_native_fields():
    cfg = load_config({"method": "rft", "optim": {"learning_rate": 1e-4},
                       "hyperparameters": {"n_epochs": 3, "batch_size": 5, "learning_rate_multiplier": 2.0,
                                           "eval_interval": 7, "eval_samples": 9, "compute_multiplier": 2.0, "seed": 11}})
    assert cfg.training.n_epochs == 3 and cfg.training.batch_size == 5
    assert cfg.optim.learning_rate == pytest.approx(2e-4)
    assert cfg.training.eval_interval == 7 and cfg.training.eval_samples == 9
    assert cfg.rft.group_size == 8 and cfg.seed == 11


def test_grader_error_rate_over_the_limit_stops_the_run(tmp_path, tiny_model):
    import copy

    from agentrft.train.rft import GraderFailure
    from agentrft.train.runner import run_job

    def broken_grader(traj, row):
        raise KeyError("answer")

    model, tok = tiny_model
    cfg = load_config({**RFT_CONFIG, "model": "unused", "out_dir": str(tmp_path / "g"),
                       "training": {**RFT_CONFIG["training"], "max_grader_error_rate": 0.25}})
    with pytest.raises(GraderFailure, match=r"100% of grades carry grader errors.*KeyError: 'answer'"):
        run_job(cfg, model=copy.deepcopy(model), tokenizer=tok, grade=broken_grader, log=lambda s: None)
    store = RunStore(tmp_path / "g")
    run = store.get_run()
    assert run["status"] == "failed" and "grader errors" in run["message"]
    # the failed grades are recorded with their flags, not silently scored
    (t0, *_) = store.trajectories(step=1)
    assert t0["grade"]["metadata"]["errors"]["other_error"] is True


def test_example_configs_load():
    from pathlib import Path

    examples = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))
    assert examples
    for path in examples:
        cfg = load_config(path)
        assert cfg.method.value in ("sft", "dpo", "rft")


def test_eval_samples_zero_turns_validation_off_but_keeps_the_final_checkpoint(tmp_path, tiny_model):
    import copy

    from agentrft.train.runner import run_job

    model, tok = tiny_model
    cfg = load_config({**RFT_CONFIG, "model": "unused", "out_dir": str(tmp_path / "r"),
                       "training": {"max_steps": 2, "batch_size": 2, "eval_interval": 1, "eval_samples": 0,
                                    "checkpoint_interval": 10}})
    result = run_job(cfg, model=copy.deepcopy(model), tokenizer=tok, log=lambda s: None)
    assert result.final_eval == {} and result.steps == 2
    store = RunStore(tmp_path / "r")
    assert store.metrics_frame("validation") == {}
    assert [c["step"] for c in store.checkpoints()] == [2]  # init_from needs the last step on disk
    with pytest.raises(ConfigError, match="early_stop_patience needs validation evals"):
        load_config({**RFT_CONFIG, "model": "unused",
                     "training": {"eval_samples": 0, "early_stop_patience": 2}})


def test_per_turn_credit_trains_on_token_advantages_and_rejects_bad_splits(tmp_path, tiny_model, monkeypatch):
    import copy

    import agentrft.train.rft as rft_mod
    from agentrft.algo.batch import num_assistant_turns
    from agentrft.train.rft import GraderFailure
    from agentrft.train.runner import run_job
    from agentrft.types import Grade

    def split_grade(traj, row):  # varied rewards, all on the last turn, a small cost on the earlier ones
        n = num_assistant_turns(traj)
        reward = (sum(traj.token_ids) % 3) / 2
        return Grade(reward=reward, turn_rewards=[-0.1] * (n - 1) + [reward + 0.1 * (n - 1)])

    seen = []
    real_loss = rft_mod.policy_loss

    def recording_loss(logp, old, adv, mask, cfg, **kw):
        seen.append((adv.clone(), mask.clone()))
        return real_loss(logp, old, adv, mask, cfg, **kw)

    monkeypatch.setattr(rft_mod, "policy_loss", recording_loss)
    model, tok = tiny_model
    base = {**RFT_CONFIG, "model": "unused", "rollout": {**RFT_CONFIG["rollout"], "max_turns": 2},
            "rft": {"group_size": 4, "credit": "per_turn", "gamma": 0.9},
            "optim": {**RFT_CONFIG["optim"], "micro_batch_size": 2, "shared_prefix_min_tokens": 4},
            "training": {"max_steps": 2, "batch_size": 2, "eval_interval": 2, "eval_samples": 0, "checkpoint_interval": 2}}
    cfg = load_config({**base, "out_dir": str(tmp_path / "ok")})
    result = run_job(cfg, model=copy.deepcopy(model), tokenizer=tok, grade=split_grade, log=lambda s: None)
    assert result.steps == 2 and seen
    for adv, mask in seen:
        assert adv.dim() == 2 and adv.shape == mask.shape  # per token, not per sequence
        assert torch.all(adv[mask == 0] == 0)
    assert any(torch.any(adv != 0) for adv, _ in seen)
    trained = [m for m in RunStore(tmp_path / "ok").metrics_frame("train").values() if m.get("trained_rollouts")]
    assert trained and all(m["shared_prefix_tokens"] >= 4 for m in trained)  # the prompt's tokens forwarded once

    def bad_split(traj, row):
        return Grade(reward=0.5 * (traj.group_index % 2), turn_rewards=[0.1, 0.2, 0.3, 0.4])
    cfg = load_config({**base, "out_dir": str(tmp_path / "bad")})
    with pytest.raises(GraderFailure, match="per-turn credit cannot use the grades of task .*4 values for"):
        run_job(cfg, model=copy.deepcopy(model), tokenizer=tok, grade=bad_split, log=lambda s: None)
    with pytest.raises(ConfigError, match="per_turn' needs a token-level loss"):
        load_config({**base, "rft": {"credit": "per_turn", "loss": "gspo"}})
    with pytest.raises(ConfigError, match="rft.gamma discounts per-turn returns"):
        load_config({**base, "rft": {"gamma": 0.9}})


def test_optimizer_step_invalidates_the_samplers_prefix_cache_even_when_fused(tiny_model):
    """Fused AdamW writes the weights without bumping their version counters: the cache must still go."""
    import copy
    from types import SimpleNamespace

    from agentrft.rollout.hf_sampler import HFSampler
    from agentrft.rollout.sampler import SamplingParams
    from agentrft.train.optim import optimizer_step

    model, tok = tiny_model
    model = copy.deepcopy(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.1, fused=True)
    sampler = HFSampler(model, pad_token_id=tok.pad_token_id)
    prompt = list(range(5, 45))
    sampler.generate([prompt, prompt], SamplingParams(temperature=0.0, max_new_tokens=3, stop_token_ids=[]))
    assert sampler._cache  # rows' keys/values kept for the next turn
    version = sampler._weights_version()
    for p in params:
        p.grad = torch.ones_like(p)
    ctx = SimpleNamespace(policy=SimpleNamespace(trainable_parameters=lambda: params), optimizer=opt,
                          scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), sampler=sampler,
                          cfg=SimpleNamespace(optim=SimpleNamespace(max_grad_norm=1.0)))
    stepped, _ = optimizer_step(ctx)
    assert stepped and sampler._weights_version() == version  # the counters did not move ...
    assert not sampler._cache  # ... and the stale keys/values are gone anyway


def test_cpu_matmul_auto_is_pinned_per_run_so_a_resume_computes_as_the_start_did(tmp_path, monkeypatch):
    """``auto`` times oneDNN against MKL at start; under load two processes can pick differently, and a
    resumed run on the other library would not be bit-identical. The first start's pick is saved and reused."""
    from agentrft.models import onednn
    from agentrft.train.runner import _pin_cpu_matmul

    cfg = load_config({"method": "rft"})
    with RunStore(tmp_path / "run") as store:
        monkeypatch.setattr(onednn, "auto_choice", lambda: ("mkl", "timed"))
        pinned = _pin_cpu_matmul(cfg, store)
        assert pinned.training.cpu_matmul == "mkl" and cfg.training.cpu_matmul == "auto"
        store.create_run(run_id="run", method="rft", resolved_config=pinned.model_dump(mode="json"), hashes={},
                         created_at=0.0)
        monkeypatch.setattr(onednn, "auto_choice", lambda: ("onednn", "timed"))  # the resumed process would flip
        assert _pin_cpu_matmul(cfg, store).training.cpu_matmul == "mkl"
        explicit = load_config({"method": "rft", "training": {"cpu_matmul": "onednn"}})
        assert _pin_cpu_matmul(explicit, store).training.cpu_matmul == "onednn"  # a setting is never overridden
