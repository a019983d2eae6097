"""A run directory keeps its run: ``--resume`` refuses a config that differs from the run's saved one unless
``--allow-config-change`` (then shown and recorded), and a run that never wrote a checkpoint does not block a
plain re-run of its config."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agentrft.config import load_config
from agentrft.errors import ConfigError
from agentrft.jobs.store import RunStore
from agentrft.train.run_directory import config_changes
from agentrft.types import Grade

AGENTRFT = [sys.executable, "-m", "agentrft.cli"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from agentrft.models.loading import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def rft(out_dir, steps: int = 4, **training) -> dict:
    return {"method": "rft", "model": "unused", "out_dir": str(out_dir), "data": {"env": "toy"},
            "lora": {"enabled": False},
            "training": {"max_steps": steps, "batch_size": 2, "eval_samples": 0, "checkpoint_interval": 1, **training},
            "rft": {"group_size": 2}, "rollout": {"max_turns": 1, "max_new_tokens": 6},
            "optim": {"learning_rate": 0.01}}


@pytest.mark.slow
def test_resume_with_another_set_is_refused_and_accepted_with_the_flag(tmp_path, model_dir):
    cfg = rft("run", steps=4)  # out_dir relative to the first start's working directory
    cfg["model"] = str(model_dir)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))

    def train(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*AGENTRFT, "train", str(path), *args], capture_output=True, text=True, timeout=600,
                              cwd=tmp_path)

    first = train("--set", "training.max_steps=2")
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = tmp_path / "run"

    # the YAML's 4 steps against the run's 2: refused, listing only that key (the absolute --out and the
    # pinned cpu_matmul are the same run's), and nothing is written
    refused = train("--resume", "--out", str(run_dir))
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "the config differs from the one the run started with" in refused.stderr
    assert "training.max_steps: 2 -> 4" in refused.stderr and "--allow-config-change" in refused.stderr
    assert "out_dir" not in refused.stderr and "cpu_matmul" not in refused.stderr
    with RunStore(run_dir) as store:
        assert store.get_run()["resolved_config"]["training"]["max_steps"] == 2
        assert not store.events("config_change") and len(store.events("resume")) == 0

    accepted = train("--resume", "--allow-config-change")
    assert accepted.returncode == 0, accepted.stderr[-3000:]
    assert "continuing with a changed config" in accepted.stdout and "training.max_steps: 2 -> 4" in accepted.stdout
    assert "continuing after step 2" in accepted.stdout
    with RunStore(run_dir) as store:
        run = store.get_run()
        assert run["status"] == "completed" and run["resolved_config"]["training"]["max_steps"] == 4
        (event,) = store.events("config_change")
        assert event["data"]["changes"] == {"training.max_steps": [2, 4]} and event["step"] == 2
        assert sorted(store.metrics_frame("train")) == [1, 2, 3, 4]

    again = train("--resume")  # the run's config is now the changed one: the same YAML resumes without a flag
    assert again.returncode == 0, again.stderr[-3000:]


def test_config_changes_normalise_paths_and_the_pinned_matmul(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pinned = {**rft("run"), "training": {**rft("run")["training"], "cpu_matmul": "mkl"}}
    saved = load_config(pinned).model_dump(mode="json")
    assert config_changes(saved, load_config(rft(tmp_path / "run")).model_dump(mode="json")) == {}
    default_dir = {**saved, "out_dir": None}  # a start that took runs/<method>-<time>, resumed with --out
    assert config_changes(default_dir, saved) == {}

    def demos(path: str) -> dict:
        sft = {**rft("run"), "method": "sft", "data": {"env": "toy", "demonstrations_file": path}}
        return load_config(sft).model_dump(mode="json")

    assert config_changes(demos("d.jsonl"), demos(str(tmp_path / "d.jsonl"))) == {}
    given = load_config({**rft("run", steps=10), "optim": {"learning_rate": 0.001}}).model_dump(mode="json")
    assert config_changes(saved, given) == {"training.max_steps": (4, 10), "optim.learning_rate": (0.01, 0.001)}
    forced = load_config({**rft("run"), "training": {**rft("run")["training"], "cpu_matmul": "onednn"}})
    assert config_changes(saved, forced.model_dump(mode="json")) == {"training.cpu_matmul": ("mkl", "onednn")}
    older = {k: v for k, v in saved.items() if k != "chat_format"}  # saved before a field existed: its default
    assert config_changes(older, saved) == {}


def test_a_run_that_failed_preparing_its_data_leaves_nothing_that_blocks_a_rerun(tmp_path, tiny_model):
    from agentrft.train.runner import run_job

    with RunStore(tmp_path / "rft") as src:  # a source run whose groups all tied: no pair to mine
        src.create_run("rft-1", "rft", {"model": "unused"}, {})
        src.log_trajectories(1, [{"task_id": "t", "trace_id": f"x{i}", "group_index": i, "token_ids": [1, 2],
                                  "token_kinds": ["prompt", "sampled"], "messages": [], "reward": 0.0,
                                  "grade": {"reward": 0.0}} for i in range(2)])
    cfg = load_config({"method": "dpo", "model": "unused", "out_dir": str(tmp_path / "dpo"),
                       "data": {"env": "toy", "pairs_from_run": str(tmp_path / "rft"), "pairs_min_margin": 0.0},
                       "training": {"max_steps": 1, "eval_samples": 0}})
    for attempt in range(2):  # the same error again, never "already holds a run"
        with pytest.raises(ConfigError, match="pairs_min_margin"):
            run_job(cfg, model=copy.deepcopy(tiny_model[0]), tokenizer=tiny_model[1], log=lambda s: None)
        assert not (tmp_path / "dpo" / "run.db").exists()


def test_a_run_that_failed_before_its_first_checkpoint_is_replaced_by_a_plain_rerun(tmp_path, tiny_model):
    from agentrft.train.rft import GraderFailure
    from agentrft.train.runner import run_job

    def broken(traj, row) -> Grade:
        raise RuntimeError("grader down")

    cfg = load_config(rft(tmp_path / "run", steps=1))
    with pytest.raises(GraderFailure):
        run_job(cfg, model=copy.deepcopy(tiny_model[0]), tokenizer=tiny_model[1], grade=broken, log=lambda s: None)
    with RunStore(tmp_path / "run") as store:
        assert store.get_run()["status"] == "failed" and not (tmp_path / "run" / "checkpoints" / "latest").exists()

    lines: list[str] = []
    from agentrft.envs.toy import even_token_share

    result = run_job(cfg, model=copy.deepcopy(tiny_model[0]), tokenizer=tiny_model[1], grade=even_token_share,
                     log=lines.append)
    assert result.steps == 1
    assert any("never wrote a checkpoint (status failed: step 1" in line and "starting it over" in line
               for line in lines), lines
    assert len(list((tmp_path / "run").glob("run.db.replaced-*"))) >= 1  # the failed run's record, kept aside
    with RunStore(tmp_path / "run") as store:
        assert store.get_run()["status"] == "completed"
        assert [e["data"]["status"] for e in store.events("status")] == ["running", "completed"]

    with pytest.raises(ConfigError, match="already holds a run"):  # a finished run is not replaced
        run_job(cfg, model=copy.deepcopy(tiny_model[0]), tokenizer=tiny_model[1], grade=even_token_share,
                log=lambda s: None)
    with pytest.raises(ConfigError, match="needs --resume"):
        run_job(cfg, model=copy.deepcopy(tiny_model[0]), tokenizer=tiny_model[1], allow_config_change=True,
                log=lambda s: None)


def test_where_metrics_go_and_where_the_server_is_are_not_drift(tmp_path):
    """``sinks`` and ``sampler.url`` may change on a resume; ``sampler.backend`` may not (it is how the run samples)."""
    saved = load_config(rft(tmp_path / "run")).model_dump(mode="json")
    given = copy.deepcopy(saved)
    given["sinks"]["tensorboard"] = not saved["sinks"]["tensorboard"]
    given["sampler"]["url"] = "http://127.0.0.1:9999/v1"
    assert config_changes(saved, given) == {}
    given["sampler"]["backend"] = "openai_compat"
    assert list(config_changes(saved, given)) == ["sampler.backend"]
