"""``load_grader``: a spec (dict, JSON file, or validated model) -> a ready :class:`Grader`.

The spec is validated first (:func:`agentrft.graders.spec.parse_spec`), so a
malformed grader fails before a run starts, with the path of every bad
field. Runtime dependencies that are not part of the spec -- where the judge
model is served, python-grader limits -- are passed here, so the spec (and its
version) stays exactly what the user wrote.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agentrft.graders.base import Grader
from agentrft.graders.checks import StringCheckGrader, TextSimilarityGrader
from agentrft.graders.endpoint import EndpointGrader
from agentrft.graders.model_graders import JudgeClient, JudgeConfig, LabelModelGrader, ScoreModelGrader
from agentrft.graders.multi import MultiGrader
from agentrft.graders.operational import CostGrader
from agentrft.graders.python_grader import PythonGrader, PythonLimits
from agentrft.graders.spec import parse_spec, read_spec
from agentrft.trust import EgressPolicy, job_trust


def load_grader(
    spec: dict[str, Any] | str | Path | BaseModel,
    *,
    judge: JudgeClient | JudgeConfig | None = None,
    python_limits: PythonLimits | None = None,
    egress: EgressPolicy | None = None,
) -> Grader:
    """Build a grader from a spec dict, a path to a spec JSON file, or a parsed spec.

    ``judge`` serves ``score_model`` / ``label_model`` graders (a
    :class:`JudgeConfig` for an OpenAI-compatible endpoint, or any
    :class:`JudgeClient`; default: ``JudgeConfig.from_env()``).
    ``egress`` is where ``endpoint`` graders and the judge's base URL may connect
    (:class:`~agentrft.trust.EgressPolicy`); a restrictive one replaces a
    ``JudgeConfig``'s own (a :class:`JudgeClient` given as ``judge`` is the
    caller's and is left as it is). Default: the policy of the job being built (:func:`agentrft.trust.job_trust`:
    trusted, unless a platform worker runs this job under its server's policy).
    A refused URL raises :class:`~agentrft.trust.EgressDenied` here, before any
    connection. Raises :class:`agentrft.errors.GraderSpecError` naming the bad
    field's path.
    """
    if isinstance(spec, str | Path):
        spec = read_spec(spec)
    egress = job_trust().egress if egress is None else egress
    if (judge is None or isinstance(judge, JudgeConfig)) and not egress.trusted:  # the judge is built here
        judge = dataclasses.replace(judge or JudgeConfig.from_env(), egress=egress)
    return _build(parse_spec(spec), judge, python_limits, egress)


def _build(spec: Any, judge: JudgeClient | JudgeConfig | None, limits: PythonLimits | None,
           egress: EgressPolicy) -> Grader:
    t = spec.type
    if t == "string_check":
        return StringCheckGrader(spec)
    if t == "text_similarity":
        return TextSimilarityGrader(spec)
    if t == "python":
        return PythonGrader(spec, limits)
    if t == "score_model":
        return ScoreModelGrader(spec, judge)
    if t == "label_model":
        return LabelModelGrader(spec, judge)
    if t == "endpoint":
        return EndpointGrader(spec, egress=egress)
    if t == "multi":
        return MultiGrader(spec, {name: _build(sub, judge, limits, egress) for name, sub in spec.graders.items()})
    if t in ("tool_calls", "tool_errors", "tokens", "latency"):
        return CostGrader(spec)
    raise AssertionError(f"no grader for spec type {t!r}")  # parse_spec admits only known types
