"""Operational graders, multi composition, and robust batch grading with error budgets."""

from __future__ import annotations

import math
import time

import pytest

from agentrft.graders import GraderErrorRateError, GraderErrorStats, check_error_rate, grade_batch, load_grader
from agentrft.graders.operational import linear_cost_reward
from agentrft.types import Grade, ToolCall, ToolCallRecord, Trajectory


def _traj(n_calls: int, answer: str = "42", total_s: float = 1.0) -> Trajectory:
    return Trajectory(
        task_id="t",
        messages=[{"role": "assistant", "content": answer}],
        tool_calls=[ToolCallRecord(call=ToolCall(name="f", arguments={}), turn=0) for _ in range(n_calls)],
        timings={"total_s": total_s},
    )


def test_linear_cost_reward():
    assert [linear_cost_reward(x, 2, 6) for x in (0, 2, 3, 4, 6, 9)] == [1.0, 1.0, 0.75, 0.5, 0.0, 0.0]


def test_operational_graders_read_the_trajectory():
    calls = load_grader({"type": "tool_calls", "target": 2, "budget": 6})
    assert [calls.grade(_traj(n)).reward for n in (1, 4, 8)] == [1.0, 0.5, 0.0]
    latency = load_grader({"type": "latency", "target_s": 1, "budget_s": 3})
    assert latency.grade(_traj(0, total_s=2.5)).reward == pytest.approx(0.25)
    tokens = load_grader({"type": "tokens", "target": 0, "budget": 10})
    traj = _traj(0)
    traj.append_tokens(list(range(5)), "prompt")
    assert tokens.grade(traj).reward == 0.5
    g = calls.grade({"output_text": "no trajectory"})
    assert g.reward == 0.0 and g.errors["sample_parse_error"]


def test_multi_combines_correctness_and_cost():
    spec = {
        "type": "multi",
        "graders": {
            "correct": {"type": "string_check", "input": "{{sample.output_text}}", "reference": "{{item.answer}}", "operation": "eq"},
            "calls": {"type": "tool_calls", "target": 2, "budget": 6},
        },
        "calculate_output": "correct * (0.8 + 0.2 * calls)",
    }
    grader = load_grader(spec)
    g = grader.grade(_traj(4), {"answer": "42"})
    assert g.reward == pytest.approx(0.9) and g.sub_rewards == {"correct": 1.0, "calls": 0.5}
    assert grader.grade(_traj(4, answer="41"), {"answer": "42"}).reward == 0.0
    # a failing sub-grader contributes 0 and its flag propagates
    g = grader.grade(_traj(1), {})
    assert g.sub_rewards["correct"] == 0.0 and g.errors["invalid_variable_error"] and g.reward == 0.0


class Misbehaving:
    """A grader that raises, hangs, or returns garbage depending on the sample."""

    name = "misbehaving"
    version = "v0"
    reward_range = (0.0, 1.0)

    def grade(self, sample, item):
        kind = sample["output_text"]
        if kind == "raise":
            raise RuntimeError("kaput")
        if kind == "hang":
            time.sleep(30)
        if kind == "none":
            return None
        reward = {"nan": math.nan, "big": 7.0, "ok": 0.5}[kind]
        return Grade(reward=reward, errors={"other_error": False})


def test_grade_batch_records_every_failure_and_keeps_order():
    kinds = ["ok", "raise", "hang", "none", "nan", "big", "ok"]
    start = time.monotonic()
    grades = grade_batch(Misbehaving(), [{"output_text": k} for k in kinds], [{}] * len(kinds), max_concurrency=3, timeout_s=0.5)
    assert time.monotonic() - start < 5
    assert [g.reward for g in grades] == [0.5, 0, 0, 0, 0, 0, 0.5]
    assert [g.errors["other_error"] for g in grades] == [False, True, True, True, True, True, False]
    messages = [" ".join(g.error_messages) for g in grades]
    assert "kaput" in messages[1] and "timed out" in messages[2] and "NoneType" in messages[3]
    assert "not finite" in messages[4] and "outside the declared range" in messages[5]

    stats = GraderErrorStats.from_grades(grades, "misbehaving")
    assert stats.total == 7 and stats.errored == 5 and stats.by_flag["other_error"] == 5
    assert stats.to_dict()["error_rate"] == pytest.approx(5 / 7)
    check_error_rate(stats, 0.8)
    with pytest.raises(GraderErrorRateError, match=r"misbehaving: 5/7 grades failed .*other_error=5"):
        check_error_rate(stats, 0.5)


def test_grade_batch_is_concurrent_and_bounded():
    src = "import time\ndef grade(s, i):\n    time.sleep(0.4)\n    return 1.0\n"
    grader = load_grader({"type": "python", "source": src})
    grade_batch(grader, ["a"] * 4, [{}] * 4, max_concurrency=4)  # starts the warm workers (cold start not timed)
    start = time.monotonic()
    grades = grade_batch(grader, ["a"] * 4, [{}] * 4, max_concurrency=4)
    assert all(g.reward == 1.0 for g in grades)
    assert time.monotonic() - start < 1.4  # 4 x 0.4 s sequentially would be >= 1.6 s
    with pytest.raises(ValueError):
        grade_batch(grader, ["a"], [], max_concurrency=2)


def test_grade_to_dict_has_openai_shape():
    g = load_grader({"type": "string_check", "input": "{{sample.output_text}}", "reference": "a", "operation": "eq"}).grade("a")
    d = g.to_dict()
    assert set(d) == {"reward", "sub_rewards", "metadata"}
    assert set(d["metadata"]) == {"errors", "error_messages", "execution_time", "grader_version"}
    assert d["metadata"]["errors"] == dict.fromkeys(
        [
            "formula_parse_error",
            "invalid_variable_error",
            "python_grader_runtime_error",
            "python_grader_server_error",
            "model_grader_parse_error",
            "model_grader_server_error",
            "sample_parse_error",
            "other_error",
        ],
        False,
    )
