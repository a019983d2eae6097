"""An eval's grading failures, told apart: the grader's faults (``grader_fault_rate``) and the model's
unparseable answers (``sample_parse_error_rate``), as the RFT loop's grader-error budget tells them apart."""

from __future__ import annotations

import pytest

from agentrft.evaluation import GradedRollout, is_grader_fault, summarize
from agentrft.types import Grade, StopReason, Trajectory


def graded(errors: dict[str, bool], stop: StopReason = StopReason.ANSWER) -> GradedRollout:
    return GradedRollout({}, Trajectory(task_id="t", messages=[], stop_reason=stop), Grade(reward=0.0, errors=errors))


def test_unparseable_answers_are_the_models_failure_not_a_grader_fault():
    rollouts = [graded({"sample_parse_error": True}), graded({"sample_parse_error": True}),
                graded({"python_grader_runtime_error": True}), graded({"sample_parse_error": False}),
                graded({"other_error": True}, stop=StopReason.INFRA_ERROR)]  # infra failures are not averaged in
    s = summarize(rollouts, wall_s=1.0)
    assert s["sample_parse_error_rate"] == pytest.approx(2 / 4)
    assert s["grader_fault_rate"] == pytest.approx(1 / 4)
    assert "grader_error_rate" not in s  # the old mixed label is gone
    assert not is_grader_fault(Grade(reward=0.0, errors={"sample_parse_error": True}))
    assert is_grader_fault(Grade(reward=0.0, errors={"sample_parse_error": True, "other_error": True}))
