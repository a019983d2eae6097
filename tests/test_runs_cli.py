"""Looking at runs without SQL: ``agentrft runs list | show | compare | plot`` on two tiny RFT runs that
differ only in their learning rate, a stored trajectory printed token by token, and the provenance an
eval's summary.json records."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from agentrft.cli import main
from agentrft.config import RolloutConfig, load_config
from agentrft.jobs.store import RunStore

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RATES = {"lr-small": 0.001, "lr-big": 0.01}


def run_config(model_dir: Path, out_dir: Path, learning_rate: float) -> dict:
    return {"method": "rft", "model": str(model_dir), "out_dir": str(out_dir), "data": {"env": "toy"},
            "lora": {"enabled": False},
            "training": {"max_steps": 2, "batch_size": 2, "eval_interval": 1, "eval_samples": 2,
                         "checkpoint_interval": 1, "keep_best_k": 1, "cpu_matmul": "mkl"},
            "rft": {"group_size": 2}, "optim": {"learning_rate": learning_rate, "micro_batch_size": 8},
            "rollout": {"max_turns": 1, "max_new_tokens": 6, "temperature": 1.0}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """``ROOT/runs/lr-small`` and ``ROOT/runs/lr-big``: 2 RFT steps each on the toy environment, an eval and a
    checkpoint at every step, from a tiny model folder (so each run's tokenizer loads from its config)."""
    from agentrft.models.loading import save_tiny_model
    from agentrft.train.runner import run_job

    root = tmp_path_factory.mktemp("runs-cli")
    base = save_tiny_model(root / "model")
    for name, lr in RATES.items():
        run_job(load_config(run_config(base, root / "runs" / name, lr)), log=lambda s: None)
    return root / "runs"


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_list_shows_every_run_with_its_progress(runs):
    out = cli("runs", "list", str(runs))
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["RUN", "METHOD", "MODEL", "STATUS", "STEPS"]
    for name in RATES:
        line = next(line for line in lines if line.startswith(name))
        assert "rft" in line and "completed" in line and "2/2" in line
    listed = json.loads(cli("runs", "list", str(runs), "--json"))
    assert sorted(o["id"] for o in listed) == sorted(RATES)
    assert all(o["steps_done"] == 2 and o["total_steps"] == 2 and 0 <= o["reward"] <= 1 for o in listed)


@pytest.mark.slow
def test_show_prints_the_metric_table_checkpoints_and_lineage(runs):
    out = cli("runs", "show", str(runs / "lr-big"))
    assert "optim.learning_rate" in out and "0.01" in out
    header = next(line for line in out.splitlines() if line.startswith("step  reward"))
    for column in ("reward", "acc", "calls", "loss", "grad norm", "zero-var", "step s", "val reward"):
        assert column in header
    steps = out.split("steps:\n")[1].split("checkpoints:")[0].splitlines()
    assert [line.split()[0] for line in steps[1:]] == ["1", "2"]
    checkpoints = out.split("checkpoints:\n")[1].split("events")[0].splitlines()
    assert checkpoints[0].split()[:3] == ["step", "eval", "reward"]
    assert [line.split()[0] for line in checkpoints[1:]] == ["1", "2"]
    with RunStore(runs / "lr-big") as store:
        run = store.get_run()
    for key in ("dataset", "grader", "base_model", "config"):
        assert f"{key}" in out and run["hashes"][key] in out
    assert "last error: none" in out and "status: completed" in out

    details = json.loads(cli("runs", "show", str(runs / "lr-big"), "--json"))
    assert [r["step"] for r in details["steps"]] == [1, 2]
    assert {"reward_mean", "loss", "grad_norm", "zero_variance_groups", "step_time_s", "val/reward_mean"} \
        <= set(details["steps"][1])
    assert [c["step"] for c in details["checkpoints"]] == [1, 2]
    assert details["checkpoints"][1]["eval"]["reward_mean"] == details["steps"][1]["val/reward_mean"]
    assert details["config"]["optim"]["learning_rate"] == 0.01 and details["last_error"] is None


@pytest.mark.slow
def test_compare_puts_metrics_side_by_side_and_diffs_the_config(runs):
    out = cli("runs", "compare", str(runs / "lr-small"), str(runs / "lr-big"))
    assert out.startswith("A: lr-small") and "\nB: lr-big" in out
    assert "lineage: dataset same, grader same, base_model same, config differs" in out
    header = next(line for line in out.splitlines() if line.startswith("step "))
    assert "reward A" in header and "reward B" in header and "val reward A" in header
    assert "last values:" in out
    assert "config: 1 key differs (A -> B)\n  optim.learning_rate: 0.001 -> 0.01" in out

    comparison = json.loads(cli("runs", "compare", str(runs / "lr-small"), str(runs / "lr-big"), "--json"))
    assert comparison["config_diff"] == [{"key": "optim.learning_rate", "old": 0.001, "new": 0.01}]
    assert [s["step"] for s in comparison["steps"]] == [1, 2]
    assert all("reward_mean" in s["a"] and "reward_mean" in s["b"] for s in comparison["steps"])
    # the first step samples before any update, with the same seed: both runs drew the same rollouts
    assert comparison["steps"][0]["a"]["reward_mean"] == comparison["steps"][0]["b"]["reward_mean"]

    last = cli("runs", "compare", str(runs / "lr-small"), str(runs / "lr-big"), "--last", "--metric", "loss")
    assert "loss A" not in last and "last values:" in last


@pytest.mark.slow
def test_a_stored_trajectory_prints_token_by_token(runs):
    out = cli("runs", "show", str(runs / "lr-small"), "--trajectory", "0")
    assert out.startswith("trajectory 0 of 8 (train, step 1")
    assert "⟦prompt ×" in out and "⟦sampled ×" in out and "<|im_start|>user" in out
    assert "stop: " in out and "reward: " in out
    val = cli("runs", "show", str(runs / "lr-small"), "--trajectory", "1", "--split", "validation", "--step", "2")
    assert val.startswith("trajectory 1 of 2 (validation, step 2")
    record = json.loads(cli("runs", "show", str(runs / "lr-small"), "--trajectory", "0", "--json"))
    assert record["step"] == 1 and len(record["token_ids"]) == len(record["token_kinds"])

    result = CliRunner().invoke(main, ["runs", "show", str(runs / "lr-small"), "--trajectory", "8"])
    assert result.exit_code == 2 and "out of range" in result.output and "(0..7)" in result.output


@pytest.mark.slow
def test_plot_writes_a_png_with_three_panels(runs, tmp_path):
    from agentrft.jobs.plot import PLOT_NAME, run_plot_figure

    out = tmp_path / "curves.png"
    assert f"wrote {out}" in cli("runs", "plot", str(runs / "lr-big"), "--out", str(out))
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    fig = run_plot_figure(runs / "lr-big")
    assert len(fig.axes) == 3
    assert [ax.get_ylabel() for ax in fig.axes] == ["mean reward", "accuracy", "tool calls / rollout"]
    assert all(len(ax.lines) == 2 for ax in fig.axes)  # train per step and the evals
    cli("runs", "plot", str(runs / "lr-small"))
    assert (runs / "lr-small" / PLOT_NAME).read_bytes()[:8] == PNG_SIGNATURE


def test_without_matplotlib_the_cli_says_how_to_install_and_the_runner_carries_on(tmp_path, monkeypatch):
    from agentrft.jobs.plot import plot_finished_run

    run_dir = tmp_path / "run"
    with RunStore(run_dir) as store:
        store.create_run("run", "rft", {"model": "m"}, {})
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # import fails
    result = CliRunner().invoke(main, ["runs", "plot", str(run_dir)])
    assert result.exit_code == 2 and "pip install matplotlib" in result.output
    logged: list[str] = []
    assert plot_finished_run(run_dir, logged.append) is None
    assert logged and logged[0].startswith("plot skipped: matplotlib is not installed")
    assert plot_finished_run(tmp_path / "not-a-run", logged.append) is None  # nothing raises


def test_an_unreadable_store_is_listed_not_fatal(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "run.db").write_bytes(b"this is not a database" * 100)
    with RunStore(tmp_path / "fine") as store:
        store.create_run("fine", "sft", {"model": "m", "training": {"max_steps": 4}}, {})
    out = CliRunner().invoke(main, ["runs", "list", str(tmp_path)])
    assert out.exit_code == 0
    assert "broken" in out.output and "unreadable" in out.output and "not a readable run store" in out.output
    assert "fine" in out.output and "0/4" in out.output
    assert (tmp_path / "broken" / "run.db").read_bytes() == b"this is not a database" * 100  # left as it was
    missing = CliRunner().invoke(main, ["runs", "show", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "not a run directory" in missing.output
    assert not (tmp_path / "nothing").exists()  # looking never creates a store


@pytest.mark.slow
def test_eval_provenance_records_what_produced_an_eval(runs):
    from agentrft.envs.registry import get_env
    from agentrft.graders import load_grader
    from agentrft.jobs.provenance import eval_provenance

    env = get_env("toy")
    rollout = RolloutConfig(temperature=0.0, top_p=0.9, seed=7, max_turns=2, max_new_tokens=32)
    p = eval_provenance(str(runs / "lr-big"), rollout, env.grade, env)
    assert p["rollout"] == rollout.model_dump(mode="json")
    assert {"temperature": 0.0, "top_p": 0.9, "seed": 7, "max_turns": 2, "max_new_tokens": 32}.items() \
        <= p["rollout"].items()
    assert p["env"] == "toy" and p["model"] == str(runs / "lr-big")
    source = p["model_source"]
    assert source["kind"] == "run" and source["checkpoint_step"] == 2 and source["method"] == "rft"
    assert source["run_id"] == "lr-big" and source["base_model"].endswith("model")
    # the environment's own grade function is identified as the runner identified it for the run
    assert p["grader"]["type"] == "function" and p["grader"]["version"] == source["grader_hash"]
    json.dumps(p)  # JSON-ready, as summary.json needs

    assert eval_provenance(f"{runs / 'lr-big'}@step=1", rollout, None, "toy")["model_source"]["checkpoint_step"] == 1
    spec = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "x",
            "operation": "eq"}
    grader = load_grader(spec)
    p = eval_provenance("smollm2-135m", rollout, grader.grade, env)
    assert p["grader"] == {"name": "exact", "type": "string_check", "version": grader.version}
    assert p["model_source"] == {"kind": "model", "name": "smollm2-135m", "path": None}
