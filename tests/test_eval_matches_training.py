"""``agentrft eval`` runs the rollout a training run's periodic eval runs: same config, same tokens.

One :class:`~agentrft.config.RolloutConfig` feeds both paths, and the CLI's
options are generated from its fields; given a run's eval settings
(:meth:`JobConfig.eval_rollout`), ``agentrft eval`` on the run's checkpoint
must reproduce every validation trajectory the run stored, token for token.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from agentrft.cli import main
from agentrft.config import RolloutConfig, load_config
from agentrft.jobs.store import RunStore
from agentrft.train.runner import run_job


def cli_options(rollout: RolloutConfig) -> list[str]:
    """``--max-turns 2 --temperature 0.0 ...``: every field of ``rollout`` as the eval command's option."""
    args = []
    for name in RolloutConfig.model_fields:
        args += [f"--{name.replace('_', '-')}", str(getattr(rollout, name))]
    return args


def eval_tokens(out: Path) -> dict[str, list[int]]:
    lines = (out / "trajectories.jsonl").read_text().splitlines()
    return {(t := json.loads(line))["task_id"]: t["token_ids"] for line in lines}


@pytest.mark.slow
def test_cli_eval_reproduces_a_runs_periodic_eval(tmp_path):
    from agentrft.models.loading import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "model")
    cfg = load_config({
        "method": "rft", "model": str(model_dir), "out_dir": str(tmp_path / "run"), "seed": 3,
        "data": {"env": "toy"},
        "training": {"max_steps": 1, "batch_size": 2, "eval_interval": 1, "eval_samples": 4},
        "rft": {"group_size": 4},
        "optim": {"learning_rate": 0.05},
        "rollout": {"max_turns": 2, "max_new_tokens": 10, "temperature": 1.0},
    })
    result = run_job(cfg, log=lambda s: None)
    with RunStore(result.run_dir) as store:
        stored = {t["task_id"]: t["token_ids"] for t in store.trajectories(split="validation")}
        trained = store.metrics_frame(split="train")[1]["trained_rollouts"]
    assert len(stored) == 4 and trained > 0  # the weights moved before the eval

    rollout = cfg.eval_rollout()
    assert (rollout.temperature, rollout.seed, rollout.max_turns) == (0.0, 3, 2)
    runner = CliRunner()
    out = tmp_path / "eval"
    res = runner.invoke(main, ["eval", "--model", str(result.run_dir), "--env", "toy", "--split", "validation",
                               "--limit", "4", "--out", str(out), *cli_options(rollout)])
    assert res.exit_code == 0, res.output
    assert eval_tokens(out) == stored

    # the comparison can fail: the base model's eval with the same options rolls out other tokens
    base = tmp_path / "base"
    res = runner.invoke(main, ["eval", "--model", str(model_dir), "--env", "toy", "--split", "validation",
                               "--limit", "4", "--out", str(base), *cli_options(rollout)])
    assert res.exit_code == 0, res.output
    assert eval_tokens(base) != stored


def test_eval_defaults_are_a_default_runs_eval():
    from agentrft.cli.common import EVAL_DEFAULTS

    cfg = load_config({"method": "rft"})
    assert cfg.eval_rollout() == EVAL_DEFAULTS
    assert cfg.rollout == RolloutConfig()  # the YAML section's defaults are the class's


def test_every_rollout_field_is_an_eval_option():
    from agentrft.cli.measure import eval_cmd

    options = {p.name for p in eval_cmd.params}
    assert set(RolloutConfig.model_fields) <= options
    help_text = CliRunner().invoke(main, ["eval", "--help"], terminal_width=200).output
    for name, field in RolloutConfig.model_fields.items():
        assert f"--{name.replace('_', '-')}" in help_text
        assert field.description and field.description.split()[0] in help_text


def test_a_bad_rollout_option_is_one_line_naming_it(tmp_path):
    res = CliRunner().invoke(main, ["eval", "--max-turns", "0", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2
    assert "invalid --max-turns" in res.output and "Traceback" not in res.output
