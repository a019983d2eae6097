"""Grading many samples robustly: bounded concurrency, per-grade deadline, error budget.

:func:`grade_batch` runs ``grader.grade`` for each (sample, item) on at most
``max_concurrency`` threads (model judges and endpoints are I/O-bound). It
never raises because of one sample: a grader that raises, returns something
that is not a ``Grade``, a NaN/None reward, a reward outside its declared
range, or takes longer than ``timeout_s`` yields a ``Grade`` with reward 0,
``other_error`` set and the reason recorded. A grade that overruns its
deadline is abandoned on a daemon thread (Python cannot kill a thread; the
python grader's own timeout kills its process).

:class:`GraderErrorStats` counts errors per flag; :func:`check_error_rate`
raises :class:`GraderErrorRateError` when a batch's error rate exceeds the
failure budget, so a broken grader stops a run instead of silently training
on zeros.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from agentrft.errors import AgentRFTError
from agentrft.graders.base import OTHER_ERROR, Outcome, check_reward, outcome_to_grade
from agentrft.types import Grade


class GraderErrorRateError(AgentRFTError):
    """Too many grades in a batch carried error flags."""


def _failed(version: str, message: str, elapsed: float) -> Grade:
    return outcome_to_grade(Outcome.failed(OTHER_ERROR, message), version, elapsed)


def safe_grade(grader: Any, sample: Any, item: dict[str, Any] | None, timeout_s: float | None = None) -> Grade:
    """``grader.grade(sample, item)`` that always returns a valid ``Grade``."""
    version = getattr(grader, "version", "")
    name = getattr(grader, "name", type(grader).__name__)
    start = time.perf_counter()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["grade"] = grader.grade(sample, item)
        except BaseException as e:  # noqa: BLE001 - recorded, never propagated
            box["error"] = e

    worker = threading.Thread(target=run, daemon=True, name=f"grade-{name}")
    worker.start()
    worker.join(timeout_s)
    elapsed = time.perf_counter() - start
    if worker.is_alive():
        return _failed(version, f"{name}: grading timed out after {timeout_s}s", elapsed)
    if "error" in box:
        e = box["error"]
        return _failed(version, f"{name}: grader raised {type(e).__name__}: {e}", elapsed)
    grade = box.get("grade")
    if not isinstance(grade, Grade):
        return _failed(version, f"{name}: grader returned {type(grade).__name__}, not a Grade", elapsed)
    checked = check_reward(grade.reward, getattr(grader, "reward_range", None), name, OTHER_ERROR)
    if checked.errors:
        grade.reward = 0.0
        grade.errors[OTHER_ERROR] = True
        grade.error_messages.extend(checked.messages)
    return grade


def grade_batch(
    grader: Any,
    samples: Sequence[Any],
    items: Sequence[dict[str, Any] | None],
    max_concurrency: int = 8,
    timeout_s: float | None = 120.0,
) -> list[Grade]:
    """Grade ``samples[i]`` against ``items[i]`` concurrently; one ``Grade`` per sample, in order."""
    if len(samples) != len(items):
        raise ValueError(f"{len(samples)} samples but {len(items)} items")
    if max_concurrency < 1:
        raise ValueError("max_concurrency must be at least 1")
    with ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="grade-batch") as pool:
        return list(pool.map(lambda pair: safe_grade(grader, pair[0], pair[1], timeout_s), zip(samples, items)))


@dataclass
class GraderErrorStats:
    """How often one grader's grades carried error flags."""

    grader: str = ""
    total: int = 0
    errored: int = 0
    by_flag: Counter = field(default_factory=Counter)

    def add(self, grade: Grade) -> None:
        self.total += 1
        flags = [flag for flag, on in grade.errors.items() if on]
        if flags or not math.isfinite(grade.reward):
            self.errored += 1
        self.by_flag.update(flags)

    @classmethod
    def from_grades(cls, grades: Iterable[Grade], grader: str = "") -> "GraderErrorStats":
        stats = cls(grader=grader)
        for g in grades:
            stats.add(g)
        return stats

    @property
    def error_rate(self) -> float:
        return self.errored / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "grader": self.grader,
            "total": self.total,
            "errored": self.errored,
            "error_rate": self.error_rate,
            "by_flag": dict(self.by_flag),
        }


def check_error_rate(stats: GraderErrorStats, threshold: float) -> None:
    """Raise :class:`GraderErrorRateError` when ``stats.error_rate`` exceeds ``threshold`` (a fraction)."""
    if stats.error_rate > threshold:
        top = ", ".join(f"{flag}={n}" for flag, n in stats.by_flag.most_common(4)) or "no flags"
        raise GraderErrorRateError(
            f"grader {stats.grader or '?'}: {stats.errored}/{stats.total} grades failed "
            f"({stats.error_rate:.1%} > allowed {threshold:.1%}); {top}"
        )
