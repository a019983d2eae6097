"""Numeric answers graded by relative error, with continuous credit.

What: :func:`extract_number` reads the number a free-text answer states
(``"$1,234.5 million"``, ``"12.3%"``, ``"-$7.5"``, ``"The answer is 42."``);
:func:`numeric_credit` turns its relative error against the reference into a
score; :func:`grade_numeric` does both for a trajectory and a task row.

Why continuous credit rather than exact match: an RL policy that answers
1,230 for 1,234.5 is closer than one that answers 12; a graded reward gives
the group advantages something to rank, where a 0/1 reward is flat for most
groups early in training. The default schedule (:class:`NumericTolerance`)::

    credit = 1                                   if rel_err <= full_credit (0.5 %)
             1 - (rel_err - full) / (zero - full) between,  linear
             0                                   if rel_err >= zero_credit (10 %)

with ``rel_err = |answer - reference| / |reference|`` (the absolute error when
the reference is 0). Accuracy is a separate, stricter yes/no: ``correct`` when
``rel_err <= correct`` (1 %); it is reported as the ``correct`` sub-reward,
which :func:`agentrft.evaluation.is_correct` reads.

Which number: the last one in the final answer, because models tend to reason
first and conclude last ("... so the answer is 42"). Numbers that merely label
a period -- a year right after "fiscal", "FY", "year", "in" or "during" --
are passed over when the answer has another number ("1,234.5 in fiscal 2021"
is 1234.5). Scale words are not applied: "$1.2 billion" reads as 1.2, since
answers are asked for in the unit the question names.

An answer without any number is not silently a 0: the grade carries the
``sample_parse_error`` flag (reward 0). A missing or non-numeric reference
is the dataset's fault and is flagged ``invalid_variable_error``.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any

from agentrft.graders.base import INVALID_VARIABLE_ERROR, SAMPLE_PARSE_ERROR, no_errors
from agentrft.graders.sample import SampleError, build_sample
from agentrft.types import Grade, Trajectory

__all__ = ["NumericTolerance", "extract_number", "grade_numeric", "numeric_credit", "relative_error"]


@dataclass(frozen=True)
class NumericTolerance:
    """Relative-error thresholds of the numeric grader (fractions: 0.01 is 1 %)."""

    full_credit: float = 0.005
    """At or below this relative error the credit is 1."""
    zero_credit: float = 0.10
    """At or above this relative error the credit is 0; linear in between."""
    correct: float = 0.01
    """At or below this relative error the answer counts as correct (accuracy)."""

    def __post_init__(self) -> None:
        if not 0 <= self.full_credit < self.zero_credit:
            raise ValueError(f"need 0 <= full_credit < zero_credit, got {self.full_credit}, {self.zero_credit}")
        if self.correct < 0:
            raise ValueError(f"correct must be >= 0, got {self.correct}")

    @property
    def version(self) -> str:
        return f"numeric-v1(full={self.full_credit:g},zero={self.zero_credit:g},correct={self.correct:g})"


DEFAULT_TOLERANCE = NumericTolerance()

_MINUS = "-\u2212\u2013"  # hyphen-minus, minus sign, en dash
_NUMBER = re.compile(
    rf"(?<![\w.,])"  # not glued to a word, a decimal point or a thousands group
    rf"(?P<sign>[{_MINUS}])?\s?"
    rf"(?:US)?[$€£]?\s?"
    rf"(?P<sign2>[{_MINUS}])?"
    rf"(?P<digits>\d{{1,3}}(?:,\d{{3}})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    rf"(?P<suffix>[kKmMbB]|bn|mn|mm)?"
    rf"(?![\w]|[.,]\d)"  # not followed by more of a word or a malformed number
)
_PERIOD_LABEL = re.compile(r"(?:\bfiscal|\bFY|\byear|\bin|\bduring)\s*$", re.IGNORECASE)


def extract_number(text: str | None) -> float | None:
    """The number a free-text answer states (the last one, skipping year labels); ``None`` if there is none."""
    if not text:
        return None
    candidates: list[tuple[float, bool]] = []  # (value, is a period label)
    for m in _NUMBER.finditer(text):
        value = float(m.group("digits").replace(",", ""))
        if m.group("sign") or m.group("sign2"):
            value = -value
        is_label = (
            not m.group("sign") and not m.group("sign2") and not m.group("suffix")
            and re.fullmatch(r"(19|20)\d\d", m.group("digits")) is not None
            and _PERIOD_LABEL.search(text, 0, m.start()) is not None
        )
        candidates.append((value, is_label))
    if not candidates:
        return None
    answers = [v for v, is_label in candidates if not is_label]
    return answers[-1] if answers else candidates[-1][0]


def relative_error(answer: float, reference: float) -> float:
    """``|answer - reference| / |reference|``; the absolute error when the reference is 0."""
    diff = abs(answer - reference)
    return diff / abs(reference) if reference != 0 else diff


def numeric_credit(rel_err: float, tolerance: NumericTolerance = DEFAULT_TOLERANCE) -> float:
    """Credit in [0, 1] for a relative error: 1 up to ``full_credit``, linear down to 0 at ``zero_credit``."""
    if math.isnan(rel_err):
        return 0.0
    if rel_err <= tolerance.full_credit:
        return 1.0
    if rel_err >= tolerance.zero_credit:
        return 0.0
    return 1.0 - (rel_err - tolerance.full_credit) / (tolerance.zero_credit - tolerance.full_credit)


def _reference(row: dict[str, Any], key: str) -> float | None:
    value = row.get(key)
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return extract_number(value)
    return None


def grade_numeric(
    trajectory: Trajectory | dict[str, Any] | str,
    row: dict[str, Any],
    answer_key: str = "answer",
    tolerance: NumericTolerance = DEFAULT_TOLERANCE,
) -> Grade:
    """Grade the final answer of ``trajectory`` against the number ``row[answer_key]``.

    ``trajectory`` may also be an OpenAI-style sample dict or the answer text.
    The grade's ``reward`` is the continuous credit; ``sub_rewards`` holds it as
    ``numeric`` and the 0/1 accuracy as ``correct``.
    """
    start = time.perf_counter()
    errors = no_errors()
    messages: list[str] = []
    credit, correct = 0.0, 0.0
    reference = _reference(row, answer_key)
    try:
        text = build_sample(trajectory)["output_text"]
    except SampleError as e:
        errors[e.flag] = True
        messages.append(f"numeric: {e}")
        text = None
    if reference is None:
        errors[INVALID_VARIABLE_ERROR] = True
        messages.append(f"numeric: item.{answer_key} is not a number ({row.get(answer_key)!r:.80})")
    elif text is not None:
        answer = extract_number(text)
        if answer is None:
            errors[SAMPLE_PARSE_ERROR] = True
            messages.append(f"numeric: no number in the answer ({text!r:.120})")
        else:
            rel = relative_error(answer, reference)
            credit = numeric_credit(rel, tolerance)
            correct = 1.0 if rel <= tolerance.correct else 0.0
    return Grade(
        reward=credit,
        sub_rewards={"numeric": credit, "correct": correct},
        errors=errors,
        error_messages=messages,
        grader_version=tolerance.version,
        execution_time=time.perf_counter() - start,
    )
