"""The grader seam: ``grade(sample, item) -> Grade``, and what every grader shares.

A grader never raises on a bad sample. Each implementation computes a score
in :meth:`Grader.score`, raising :class:`GradingFailure` with an OpenAI flag
when it cannot; :meth:`Grader.grade` turns that into a ``Grade`` with reward
0, the flag set and the message recorded -- a failure is data, never a crash
and never a silent 0.0. Anything else a grader raises becomes
``other_error``.

The error flags are OpenAI's ``graders/run`` names; every ``Grade.errors``
holds all of them (``False`` unless set) so results have one shape.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from agentrft.graders.sample import SampleError, build_sample
from agentrft.graders.spec import grader_version
from agentrft.graders.templates import TemplateError
from agentrft.types import Grade, Trajectory

FORMULA_PARSE_ERROR = "formula_parse_error"
INVALID_VARIABLE_ERROR = "invalid_variable_error"
PYTHON_GRADER_RUNTIME_ERROR = "python_grader_runtime_error"
PYTHON_GRADER_SERVER_ERROR = "python_grader_server_error"
MODEL_GRADER_PARSE_ERROR = "model_grader_parse_error"
MODEL_GRADER_SERVER_ERROR = "model_grader_server_error"
SAMPLE_PARSE_ERROR = "sample_parse_error"
OTHER_ERROR = "other_error"

ERROR_FLAGS: tuple[str, ...] = (
    FORMULA_PARSE_ERROR,
    INVALID_VARIABLE_ERROR,
    PYTHON_GRADER_RUNTIME_ERROR,
    PYTHON_GRADER_SERVER_ERROR,
    MODEL_GRADER_PARSE_ERROR,
    MODEL_GRADER_SERVER_ERROR,
    SAMPLE_PARSE_ERROR,
    OTHER_ERROR,
)


def no_errors() -> dict[str, bool]:
    return {flag: False for flag in ERROR_FLAGS}


class GradingFailure(Exception):
    """A grader could not score a sample; ``flag`` is the OpenAI error name."""

    def __init__(self, flag: str, message: str):
        assert flag in ERROR_FLAGS, flag
        super().__init__(message)
        self.flag = flag
        self.message = message


@dataclass
class Outcome:
    """A score with the errors met on the way (what ``Grade`` is built from)."""

    score: float
    errors: set[str] = field(default_factory=set)
    messages: list[str] = field(default_factory=list)
    sub_rewards: dict[str, float] = field(default_factory=dict)

    @classmethod
    def failed(cls, flag: str, message: str) -> "Outcome":
        return cls(score=0.0, errors={flag}, messages=[message])


class Grader:
    """Base of every grader built from a spec.

    ``reward_range`` is the declared range of ``reward`` (``None``: any finite
    float, e.g. a ``multi`` formula or a python grader).
    """

    reward_range: tuple[float, float] | None = (0.0, 1.0)
    invalid_score_flag: str = OTHER_ERROR  # flag for a score that is not a finite number in range

    def __init__(self, spec: Any):
        self.spec = spec
        self.name: str = spec.name
        self.type: str = spec.type
        self.version: str = grader_version(spec)

    # -- to implement ---------------------------------------------------------------
    def score(self, sample: dict[str, Any], item: dict[str, Any]) -> float:
        """The score of one normalised sample; raise :class:`GradingFailure` when it cannot be computed."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------
    def evaluate(self, sample: dict[str, Any], item: dict[str, Any]) -> Outcome:
        """:meth:`score` with every failure turned into a flagged :class:`Outcome`."""
        try:
            value = self.score(sample, item)
        except GradingFailure as e:
            return Outcome.failed(e.flag, f"{self.name}: {e.message}")
        except (TemplateError, SampleError) as e:
            return Outcome.failed(e.flag, f"{self.name}: {e}")
        except Exception as e:  # a bug or an unexpected input: recorded, never raised
            return Outcome.failed(OTHER_ERROR, f"{self.name}: {type(e).__name__}: {e}")
        return check_reward(value, self.reward_range, self.name, self.invalid_score_flag)

    def grade(self, sample: Trajectory | dict[str, Any] | str, item: dict[str, Any] | None = None) -> Grade:
        """Grade one sample (a Trajectory, an OpenAI-style sample dict, or plain output text) against its item."""
        start = time.perf_counter()
        try:
            outcome = self.evaluate(build_sample(sample), dict(item or {}))
        except SampleError as e:
            outcome = Outcome.failed(e.flag, f"{self.name}: {e}")
        return outcome_to_grade(outcome, self.version, time.perf_counter() - start)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, version={self.version!r})"


def check_reward(value: Any, reward_range: tuple[float, float] | None, who: str, flag: str) -> Outcome:
    """Accept a finite number inside ``reward_range``; anything else is a flagged 0."""
    if isinstance(value, bool):
        value = float(value)
    if not isinstance(value, int | float):
        return Outcome.failed(flag, f"{who}: score must be a number, got {type(value).__name__} ({value!r:.80})")
    value = float(value)
    if not math.isfinite(value):
        return Outcome.failed(flag, f"{who}: score is not finite ({value})")
    if reward_range is not None and not reward_range[0] <= value <= reward_range[1]:
        return Outcome.failed(flag, f"{who}: score {value} outside the declared range {list(reward_range)}")
    return Outcome(score=value)


def outcome_to_grade(outcome: Outcome, version: str, execution_time: float) -> Grade:
    errors = no_errors()
    for flag in outcome.errors:
        errors[flag] = True
    return Grade(
        reward=outcome.score,
        sub_rewards=dict(outcome.sub_rewards),
        errors=errors,
        error_messages=list(outcome.messages),
        grader_version=version,
        execution_time=execution_time,
    )
