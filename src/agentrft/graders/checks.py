"""Deterministic text graders: ``string_check`` and ``text_similarity``.

Both render their ``input`` and ``reference`` templates against the sample
and item, then compare. ``string_check`` follows OpenAI exactly: ``eq`` /
``ne`` compare whole strings, ``like`` is "reference occurs in input",
``ilike`` the same ignoring case; the reward is 1 or 0. ``text_similarity``
returns the metric itself (see :mod:`agentrft.graders.similarity`);
``pass_threshold``, when given, only decides :meth:`TextSimilarityGrader.passed`.
"""

from __future__ import annotations

from typing import Any

from agentrft.graders.base import Grader
from agentrft.graders.similarity import similarity
from agentrft.graders.spec import StringCheckSpec, TextSimilaritySpec
from agentrft.graders.templates import render


def string_check(value: str, reference: str, operation: str) -> bool:
    if operation == "eq":
        return value == reference
    if operation == "ne":
        return value != reference
    if operation == "like":
        return reference in value
    if operation == "ilike":
        return reference.casefold() in value.casefold()
    raise ValueError(f"unknown string_check operation {operation!r}")


class StringCheckGrader(Grader):
    spec: StringCheckSpec

    def score(self, sample: dict[str, Any], item: dict[str, Any]) -> float:
        value = render(self.spec.input, sample, item)
        reference = render(self.spec.reference, sample, item)
        return 1.0 if string_check(value, reference, self.spec.operation) else 0.0


class TextSimilarityGrader(Grader):
    spec: TextSimilaritySpec

    def score(self, sample: dict[str, Any], item: dict[str, Any]) -> float:
        value = render(self.spec.input, sample, item)
        reference = render(self.spec.reference, sample, item)
        return similarity(self.spec.evaluation_metric, value, reference)

    def passed(self, reward: float) -> bool | None:
        """Whether ``reward`` meets ``pass_threshold`` (``None`` when the spec sets none)."""
        threshold = self.spec.pass_threshold
        return None if threshold is None else reward >= threshold
