"""The CLI end to end with a tiny model: eval writes summary.json, rollout shows token kinds,
tasks exports JSONL, grader variance reports the learning signal, errors are clear."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from agentrft.cli import main
from agentrft.evaluation import GradedRollout, variance_report
from agentrft.types import Grade, Trajectory

SUMMARY_KEYS = {"reward_mean", "accuracy", "tool_calls_per_rollout", "tool_error_rate", "tokens_mean", "wall_s"}


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    from agentrft.models.loading import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-cli") / "model")


def test_eval_through_the_real_cli_writes_summary(tmp_path, tiny_model_dir):
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "-m", "agentrft.cli", "eval", "--model", str(tiny_model_dir), "--env", "finance",
         "--split", "validation", "--limit", "3", "--samples", "2", "--max-new-tokens", "8", "--max-turns", "2",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["n_rollouts"] == 6 and summary["n_tasks"] == 3
    lines = (out / "trajectories.jsonl").read_text().splitlines()
    assert len(lines) == 6
    first = json.loads(lines[0])
    assert set(first["token_kinds"]) <= {"prompt", "sampled", "env"} and "sampled" in first["token_kinds"]
    assert "grade" in first and 0.0 <= first["grade"]["reward"] <= 1.0
    # tokens in the summary are the record's tokens
    assert summary["tokens_mean"] == pytest.approx(sum(len(json.loads(l)["token_ids"]) for l in lines) / 6)
    assert "mean reward" in proc.stdout and "tool calls / rollout" in proc.stdout


def test_rollout_prints_token_kinds(tiny_model_dir):
    res = CliRunner().invoke(main, ["rollout", "--model", str(tiny_model_dir), "--env", "finance", "--index", "1",
                                    "--max-new-tokens", "6", "--max-turns", "1"])
    assert res.exit_code == 0, res.output
    assert "⟦prompt ×" in res.output and "⟦sampled ×6⟧" in res.output
    assert "stop:" in res.output and "trace_id" in res.output
    res = CliRunner().invoke(main, ["rollout", "--model", str(tiny_model_dir), "--json", "--max-new-tokens", "4",
                                    "--max-turns", "1"])
    record = json.loads(res.stdout)
    assert record["token_kinds"].count("sampled") == 4


def test_clear_errors_for_bad_model_env_and_split(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["eval", "--model", "no-such-model", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "smollm2-135m" in res.output
    res = runner.invoke(main, ["eval", "--env", "nope", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "finance" in res.output
    res = runner.invoke(main, ["tasks", "--env", "finance", "--split", "nope"])
    assert res.exit_code == 2 and "validation" in res.output


def test_tasks_exports_openai_rft_rows(tmp_path):
    out = tmp_path / "val.jsonl"
    res = CliRunner().invoke(main, ["tasks", "--env", "finance", "--split", "validation", "--limit", "5", "--out", str(out)])
    assert res.exit_code == 0, res.output
    from agentrft.datasets import load_jsonl_dataset

    loaded = load_jsonl_dataset(out, strict=True)
    assert len(loaded.rows) == 5 and all("answer" in r and r["messages"] for r in loaded.rows)


def _graded(rewards: list[float], task: str) -> list[GradedRollout]:
    return [GradedRollout({}, Trajectory(task_id=task, messages=[]), Grade(reward=r)) for r in rewards]


def test_variance_report_values():
    graded = _graded([1.0, 1.0, 1.0], "a") + _graded([0.0, 0.5, 1.0], "b")
    rep = variance_report(graded, samples=3)
    assert rep["tasks"] == 2 and rep["zero_variance_tasks"] == 1 and rep["zero_variance_fraction"] == 0.5
    assert rep["reward_mean"] == pytest.approx(4.5 / 6)
    assert rep["per_task"][1]["std"] == pytest.approx((1 / 6) ** 0.5)


def test_grader_variance_command_with_tiny_model(tmp_path, tiny_model_dir):
    spec = tmp_path / "len.json"
    spec.write_text(json.dumps({"type": "python", "name": "len3",
                                "source": "def grade(sample, item):\n    return float(len(sample['output_text']) % 3 == 0)\n"}))
    out = tmp_path / "var.json"
    res = CliRunner().invoke(main, ["grader", "variance", str(spec), "--model", str(tiny_model_dir), "--env", "toy",
                                    "--limit", "2", "--samples", "3", "--max-new-tokens", "5", "--max-turns", "1",
                                    "--json-out", str(out)])
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    assert rep["tasks"] == 2 and all(len(t["rewards"]) == 3 for t in rep["per_task"])
    assert all(r in (0.0, 1.0) for t in rep["per_task"] for r in t["rewards"])
    zero = sum(1 for t in rep["per_task"] if len(set(t["rewards"])) == 1)
    assert rep["zero_variance_tasks"] == zero
    assert "zero-variance tasks" in res.output


@pytest.mark.slow
def test_quickstart_writes_every_stage(tmp_path, tiny_model_dir):
    out = tmp_path / "qs"
    res = CliRunner().invoke(main, ["quickstart", "--out", str(out), "--model", str(tiny_model_dir), "--test-tasks", "2",
                                    "--sft-steps", "1", "--rft-steps", "1"])
    assert res.exit_code == 0, res.output
    result = json.loads((out / "quickstart.json").read_text())
    assert result["test_tasks"] == 2 and result["wall_s"] > 0
    for stage in ("baseline", "sft", "rft"):
        s = result[stage]
        assert {"accuracy", "reward_mean", "tool_calls_per_rollout", "tokens_mean", "wall_s", "accuracy_ci95",
                "tool_calls_ci95"} <= set(s)
        assert s["n_rollouts"] == 2
        assert (out / stage / "summary.json").exists()
    assert (out / "runs" / "sft" / "run.db").exists() and (out / "runs" / "rft" / "run.db").exists()
    assert "95% CI" in res.output
    assert f"agentrft serve --model {out / 'runs' / 'rft'}" in res.output  # the next step names the trained run
    assert set(result["verdict"]) >= {"met", "accuracy_gain_points", "fewer_tool_calls_share"}


def test_quickstart_verdict_follows_the_issue_targets():
    from agentrft.quickstart import verdict

    sft = {"accuracy": 0.30, "accuracy_ci95": [0.17, 0.47], "tool_calls_per_rollout": 5.0}
    # 45 % fewer calls at the same accuracy: met through the tool-call target
    v = verdict(sft, {"accuracy": 0.30, "accuracy_ci95": [0.17, 0.47], "tool_calls_per_rollout": 2.75})
    assert v["met"] and v["met_tool_call_target"] and not v["met_accuracy_target"]
    assert abs(v["fewer_tool_calls_share"] - 0.45) < 1e-9
    # fewer calls, but accuracy fell below SFT's interval: not met
    v = verdict(sft, {"accuracy": 0.10, "accuracy_ci95": [0.03, 0.25], "tool_calls_per_rollout": 2.0})
    assert not v["met"] and not v["rft_accuracy_not_below_sft_interval"]
    # +16 points: met through the accuracy target even with more calls
    v = verdict(sft, {"accuracy": 0.46, "accuracy_ci95": [0.3, 0.6], "tool_calls_per_rollout": 6.0})
    assert v["met"] and v["met_accuracy_target"] and abs(v["accuracy_gain_points"] - 16) < 1e-6
    # 30 % fewer calls: not enough
    assert not verdict(sft, {"accuracy": 0.3, "accuracy_ci95": [0.2, 0.4], "tool_calls_per_rollout": 3.5})["met"]
    # +16 points inside the noise (paired test p >= 0.05) does not count; significant, it does
    rft = {"accuracy": 0.46, "accuracy_ci95": [0.3, 0.6], "tool_calls_per_rollout": 6.0}
    noisy = {"n_tasks": 32, "only_first_correct": 3, "only_second_correct": 8, "both_correct": 6, "p_value": 0.23}
    v = verdict(sft, rft, noisy)
    assert not v["met"] and not v["met_accuracy_target"] and v["paired"]["mcnemar_p_value"] == 0.23
    assert verdict(sft, rft, {**noisy, "p_value": 0.01})["met_accuracy_target"]


def test_mcnemar_exact_p_and_paired_accuracy():
    from agentrft.evaluation import mcnemar_exact_p, paired_accuracy
    from agentrft.types import Grade, Trajectory

    # hand-computed: 10 vs 3 discordant -> 2 * (C(13,0)+C(13,1)+C(13,2)+C(13,3)) / 2^13 = 2 * 378 / 8192
    assert abs(mcnemar_exact_p(3, 10) - 2 * 378 / 8192) < 1e-12 and mcnemar_exact_p(10, 3) == mcnemar_exact_p(3, 10)
    assert mcnemar_exact_p(0, 0) == 1.0 and mcnemar_exact_p(4, 4) == 1.0 and mcnemar_exact_p(0, 6) == 2 / 64

    def graded(outcomes: dict[str, bool]) -> list[GradedRollout]:
        return [GradedRollout({}, Trajectory(task_id=t, messages=[]), Grade(reward=1.0 if ok else 0.0))
                for t, ok in outcomes.items()]

    a = graded({"t1": True, "t2": False, "t3": False, "t4": True})
    b = graded({"t4": False, "t3": True, "t2": True, "t1": True})  # paired by task id, not by position
    res = paired_accuracy(a, b)
    assert (res["only_first_correct"], res["only_second_correct"], res["both_correct"]) == (1, 2, 1)
    assert res["p_value"] == mcnemar_exact_p(1, 2)
    assert res["n_tasks"] == 4 and res["infra_failures_dropped"] == 0
    # a task that failed on infrastructure in either eval is not a pair (summarize leaves it out of accuracy too)
    from agentrft.types import StopReason

    b_failed = graded({"t4": False, "t3": True, "t2": True, "t1": True})
    b_failed[2].trajectory.stop_reason = StopReason.INFRA_ERROR  # t2: would have been "only the second correct"
    res = paired_accuracy(a, b_failed)
    assert (res["n_tasks"], res["infra_failures_dropped"]) == (3, 1)
    assert (res["only_first_correct"], res["only_second_correct"], res["both_correct"]) == (1, 1, 1)
    with pytest.raises(ValueError, match="same tasks"):
        paired_accuracy(a, graded({"t1": True}))
    with pytest.raises(ValueError, match="one rollout per task"):
        paired_accuracy(a + a, b + b)


def test_mean_interval():
    from agentrft.evaluation import mean_interval

    lo, hi = mean_interval([2.0, 2.0, 5.0, 5.0])
    assert abs((lo + hi) / 2 - 3.5) < 1e-9 and abs((hi - lo) / 2 - 1.96 * (3**0.5) / 2) < 1e-9
    assert mean_interval([]) == (0.0, 0.0) and mean_interval([4.0]) == (4.0, 4.0)


@pytest.mark.parametrize("args, says", [
    (["--set", "model.x=1"], "model is a value (str), not a section"),
    (["--set", "training.max_steps.foo=1"], "training.max_steps is a value (int), not a section"),
    (["--set", "training.max_steps=[1"], "the value is not valid YAML"),
    (["--set", "training.max_steps"], "--set expects KEY=VALUE"),
    (["--set", "rollout.eval_temperature=0.5"], "rollout.eval_temperature: this key is now training.eval_temperature"),
])
def test_bad_overrides_are_one_line_errors_with_exit_code_2(args, says):
    res = CliRunner().invoke(main, ["train", str(Path(__file__).parents[1] / "examples" / "finance_rft.yaml"), *args])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


@pytest.mark.parametrize("content, says", [
    (b"method: rft\nmodel: \xff\xfe\n", "is not UTF-8 text"),
    (b"method: rft\nmodel: [unclosed\n", "is not valid YAML"),
    (b"- method: rft\n", "must be a mapping at the top level"),
])
def test_bad_config_files_are_one_line_errors_with_exit_code_2(tmp_path, content, says):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_bytes(content)
    res = CliRunner().invoke(main, ["train", str(cfg)])
    assert res.exit_code == 2 and says in res.output and "Traceback" not in res.output, res.output
    assert len([line for line in res.output.splitlines() if line.strip()]) == 1
