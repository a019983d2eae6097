"""``summarize`` on hand-built rollouts: per-category figures, exact vs partial credit, tool-call counts from
``traj.tool_calls`` (schema violations included), the two time measures, and the console table."""

from __future__ import annotations

import enum

import click
import pytest
from click.testing import CliRunner

from agentrft.cli.measure import print_summary_table
from agentrft.evaluation import GradedRollout, summarize, wilson_interval
from agentrft.types import Grade, StopReason, ToolCall, ToolCallRecord, ToolError, ToolErrorKind, Trajectory


class _FutureKind(str, enum.Enum):
    """Stands in for the ``ToolErrorKind`` member another change adds: only ``.value`` is compared."""

    SCHEMA_VIOLATION = "schema_violation"


def _record(error_kind=None, result: str | None = "ok") -> ToolCallRecord:
    error = ToolError(error_kind, "bad") if error_kind is not None else None
    return ToolCallRecord(call=ToolCall(name="lookup", arguments={}), turn=1, result=result, error=error)


def _rollout(reward: float, category: str | None = None, calls: list[ToolCallRecord] | None = None,
             total_s: float = 1.0, stop: StopReason = StopReason.ANSWER, key: str = "category",
             task: str = "t") -> GradedRollout:
    row = {"messages": []} if category is None else {"messages": [], key: category}
    traj = Trajectory(task_id=task, messages=[], tool_calls=calls or [], stop_reason=stop,
                      timings={"total_s": total_s})
    return GradedRollout(row, traj, Grade(reward=reward))


def test_exact_partial_and_zero_split_the_scored_rollouts_by_reward():
    graded = [_rollout(1.0), _rollout(0.995), _rollout(0.5), _rollout(0.01), _rollout(0.0), _rollout(-0.2),
              _rollout(1.0, stop=StopReason.INFRA_ERROR)]
    s = summarize(graded, wall_s=7.0)
    assert (s["exact"], s["partial"], s["zero"]) == (2, 2, 2)
    assert s["infra_failures"] == 1 and s["n_rollouts"] == 7
    assert s["accuracy"] == pytest.approx(2 / 6)
    # the threshold moves the exact/partial boundary; zero stays reward <= 0
    s = summarize(graded, wall_s=7.0, accuracy_threshold=0.5)
    assert (s["exact"], s["partial"], s["zero"]) == (3, 1, 2)


def test_exact_counts_reward_while_accuracy_follows_a_correct_sub_reward():
    graded = [GradedRollout({}, Trajectory(task_id="t", messages=[]), Grade(reward=0.4, sub_rewards={"correct": 1.0}))]
    s = summarize(graded, wall_s=1.0)
    assert s["accuracy"] == 1.0 and (s["exact"], s["partial"], s["zero"]) == (0, 1, 0)


def test_by_category_reports_each_category_with_its_interval():
    graded = [
        _rollout(1.0, "lookup", [_record(), _record()]),
        _rollout(1.0, "lookup", [_record()]),
        _rollout(0.0, "lookup", []),
        _rollout(0.5, "math", [_record()]),
        _rollout(1.0, "math", [], stop=StopReason.INFRA_ERROR),
        _rollout(1.0),  # a row without the key
    ]
    by = summarize(graded, wall_s=1.0)["by_category"]
    assert list(by) == ["(none)", "lookup", "math"]
    lookup = by["lookup"]
    assert lookup["n"] == 3 and lookup["accuracy"] == pytest.approx(2 / 3)
    assert lookup["accuracy_ci95"] == pytest.approx(list(wilson_interval(2 / 3, 3)))
    assert lookup["reward_mean"] == pytest.approx(2 / 3) and lookup["tool_calls_per_rollout"] == pytest.approx(1.0)
    assert (lookup["exact"], lookup["partial"], lookup["zero"], lookup["infra_failures"]) == (2, 0, 1, 0)
    math = by["math"]  # the infra failure is counted, not scored
    assert math["n"] == 1 and math["accuracy"] == 0.0 and math["partial"] == 1 and math["infra_failures"] == 1
    assert by["(none)"]["n"] == 1 and by["(none)"]["accuracy"] == 1.0


def test_category_key_is_a_parameter_and_absent_categories_add_nothing():
    graded = [_rollout(1.0, "easy", key="difficulty"), _rollout(0.0, "hard", key="difficulty")]
    assert "by_category" not in summarize(graded, wall_s=1.0)
    by = summarize(graded, wall_s=1.0, category_key="difficulty")["by_category"]
    assert {k: v["accuracy"] for k, v in by.items()} == {"easy": 1.0, "hard": 0.0}


def test_tool_call_counts_come_from_the_records_and_count_schema_violations():
    schema_only = _record(result="")  # a function-calling-mode call: recorded, not executed, no error
    graded = [
        _rollout(1.0, calls=[schema_only, _record(_FutureKind.SCHEMA_VIOLATION, result="")]),
        _rollout(1.0, calls=[_record(ToolErrorKind.TIMEOUT), _record()]),
        _rollout(0.0, calls=[]),
        _rollout(0.0, calls=[_record(_FutureKind.SCHEMA_VIOLATION)], stop=StopReason.INFRA_ERROR),
    ]
    s = summarize(graded, wall_s=1.0)
    assert s["tool_calls_total"] == 4 and s["tool_calls_per_rollout"] == pytest.approx(4 / 3)
    assert s["schema_violations"] == 1  # the infra failure's record is not counted
    assert s["tool_error_rate"] == pytest.approx(2 / 4) and s["tool_call_rate"] == pytest.approx(2 / 3)


def test_time_in_batch_and_wall_time_per_rollout_are_separate_figures():
    graded = [_rollout(1.0, total_s=4.0), _rollout(1.0, total_s=6.0)]
    s = summarize(graded, wall_s=6.0)
    assert s["rollout_span_s_mean"] == pytest.approx(5.0)
    assert "latency_s_mean" not in s  # renamed: it never was a per-rollout latency
    assert s["seconds_per_rollout"] == pytest.approx(3.0)


def test_table_labels_the_two_times_and_prints_categories():
    s = summarize([_rollout(1.0, "lookup", [_record()], total_s=4.0), _rollout(0.5, "math", total_s=6.0)],
                  wall_s=6.0)

    def table(rows):
        r = CliRunner().invoke(click.command()(lambda: print_summary_table(rows)))
        assert r.exit_code == 0, r.output
        return r.output

    out = table({"eval": s})
    lines = {line.split("  ")[0]: line for line in out.splitlines()}
    assert lines["time in batch / rollout (s)"].split()[-1] == "5.00"
    assert lines["wall time / rollout (s)"].split()[-1] == "3.00"
    assert lines["partial credit"].split()[-1] == "1" and lines["exact (reward >= threshold)"].split()[-1] == "1"
    assert "latency / rollout" not in out
    assert "by category:" in out
    assert "  lookup: n=1  accuracy 100.0% [" in out and "tool calls / rollout 1.00" in out
    assert "  math: n=1  accuracy 0.0% [" in out and "mean reward 0.500" in out
    # an older summary with only the deprecated key still fills the row; missing keys print "-"
    old = table({"old": {"latency_s_mean": 2.5, "reward_mean": 0.1}})
    assert "time in batch / rollout (s)" in old and "2.50" in old and "-" in old
