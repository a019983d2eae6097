"""Operational graders: turn a rollout's cost into a continuous reward.

agentrft extension types that read ``sample.trajectory`` (see
:mod:`agentrft.graders.sample`): ``tool_calls``, ``tool_errors``, ``tokens``
and ``latency``. Each gives 1 at or below ``target``, falls linearly to 0 at
``budget`` and stays 0 beyond, so a ``multi`` formula such as
``0.8 * correct + 0.2 * tool_calls`` rewards a correct *and* cheap agent
without the cliff a hard cap would put in the reward.

A sample with no trajectory data (a plain dict without ``trajectory``)
flags ``sample_parse_error``: guessing 0 calls would hand out free reward.
"""

from __future__ import annotations

from typing import Any

from agentrft.graders.base import SAMPLE_PARSE_ERROR, Grader, GradingFailure


def linear_cost_reward(value: float, target: float, budget: float) -> float:
    """1 at or below ``target``, 0 at or above ``budget``, linear between."""
    if value <= target:
        return 1.0
    if value >= budget:
        return 0.0
    return (budget - value) / (budget - target)


# grader type -> the sample.trajectory field it reads
MEASURED_FIELD = {"tool_calls": "tool_calls", "tool_errors": "tool_errors", "tokens": "tokens", "latency": "latency_s"}


class CostGrader(Grader):
    def score(self, sample: dict[str, Any], item: dict[str, Any]) -> float:
        key = MEASURED_FIELD[self.type]
        traj = sample.get("trajectory")
        if not isinstance(traj, dict) or key not in traj:
            raise GradingFailure(SAMPLE_PARSE_ERROR, f"sample has no trajectory.{key} (grade a Trajectory, or pass it)")
        value = traj[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise GradingFailure(SAMPLE_PARSE_ERROR, f"trajectory.{key} must be a number, got {value!r}")
        target, budget = self.spec.bounds()
        return linear_cost_reward(float(value), target, budget)
