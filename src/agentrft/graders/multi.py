"""The ``multi`` grader: named sub-graders combined by a ``calculate_output`` formula.

Each sub-grader is evaluated on the same sample; its score becomes a
variable of the formula (see :mod:`agentrft.graders.formula`) and an entry of
``sub_rewards``. A failing sub-grader contributes 0 *and* its flag and
message propagate to the combined grade, so a broken part of a reward is
always visible. The formula may produce any finite value (e.g. a penalty
below 0), so the multi grader declares no reward range.
"""

from __future__ import annotations

from typing import Any

from agentrft.graders.base import Grader, Outcome
from agentrft.graders.formula import FormulaError, parse_formula
from agentrft.graders.spec import MultiSpec


class MultiGrader(Grader):
    spec: MultiSpec
    reward_range = None

    def __init__(self, spec: MultiSpec, graders: dict[str, Grader]):
        super().__init__(spec)
        self.graders = graders
        self._formula_text = spec.calculate_output

    def evaluate(self, sample: dict[str, Any], item: dict[str, Any]) -> Outcome:
        combined = Outcome(score=0.0)
        for name, grader in self.graders.items():
            sub = grader.evaluate(sample, item)
            combined.sub_rewards[name] = sub.score
            combined.errors |= sub.errors
            combined.messages += sub.messages
        try:
            combined.score = parse_formula(self._formula_text).evaluate(combined.sub_rewards)
        except FormulaError as e:
            combined.score = 0.0
            combined.errors.add(e.flag)
            combined.messages.append(f"{self.name}: calculate_output {self._formula_text!r}: {e}")
        return combined
