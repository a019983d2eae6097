"""Validate and run one grader spec: what ``agentrft grader validate/run`` and the graders API both call.

:func:`validate_grader` checks a spec and returns it as validated (defaults filled in); :func:`run_grader`
builds the grader and grades one sample against one item, returning a :class:`GraderRun` that renders as
OpenAI's ``graders/run`` response (:meth:`GraderRun.to_openai`) or as agentrft's grade JSON.

With ``untrusted=True`` (the platform server, whose API clients are not trusted; docs/security.md) a spec
is also refused, with the path of the offending field, when

* it is not a JSON object: a string is never read as a file path on the server;
* an ``endpoint`` grader's header holds ``${...}``: the CLI expands it from its own environment, and a
  server must never read its environment on a client's behalf (and send it to a host of the client's
  choice);
* an ``endpoint`` grader's URL fails the server's egress policy (checked here to name the field; the
  grader's own client checks again when it connects).

The judge of ``score_model``/``label_model`` graders is the operator's (``judge``: default
``JudgeConfig.from_env()``), never the client's; its base URL must pass ``egress`` too. A refused judge is
not a bad request (nothing in it could fix it): each model grader then flags ``model_grader_server_error``
with the refusal as its details, as for a judge that does not answer, and the other graders of a ``multi``
still score.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel

from agentrft.errors import GraderSpecError
from agentrft.graders.base import (MODEL_GRADER_SERVER_ERROR, PYTHON_GRADER_RUNTIME_ERROR,
                                   PYTHON_GRADER_SERVER_ERROR, Grader)
from agentrft.graders.loader import load_grader
from agentrft.graders.model_graders import JudgeClient, JudgeConfig, JudgeServerError, OpenAIChatJudge
from agentrft.graders.spec import GRADER_TYPES, EndpointSpec, MultiSpec, parse_spec, read_spec
from agentrft.trust import EgressDenied, EgressPolicy, job_trust
from agentrft.types import Grade, Trajectory

MODEL_GRADER_TYPES = ("score_model", "label_model")
OPENAI_ONLY_FLAGS = ("model_grader_refusal_error", "truncated_observation_error", "unresponsive_reward_error")
"""OpenAI's ``graders/run`` error flags that agentrft never sets: always ``false`` in :meth:`GraderRun.to_openai`."""
_PATH_LINE = re.compile(r"^\s*(\S+?): ")


class SpecRejected(GraderSpecError):
    """A spec that cannot be validated or run here; ``path`` is the offending field (``<root>``: the spec)."""

    def __init__(self, message: str, path: str = "<root>") -> None:
        super().__init__(message)
        self.path = path


def validate_grader(spec: dict[str, Any] | str | Path | BaseModel, *, untrusted: bool = False,
                    egress: EgressPolicy | None = None) -> BaseModel:
    """The spec as validated (a pydantic spec; ``.model_dump(mode="json", exclude_none=True)`` for JSON).
    Raises :class:`SpecRejected` naming the bad field's path."""
    if untrusted and not isinstance(spec, dict):
        raise SpecRejected(f"a grader must be a JSON object, got {type(spec).__name__}")
    if isinstance(spec, str | Path):
        spec = read_spec(spec)
    if isinstance(spec, dict) and spec.get("type") not in GRADER_TYPES:  # pydantic puts a bad tag at the root
        raise SpecRejected(f"type: {spec.get('type')!r} is not a grader type (one of {', '.join(GRADER_TYPES)})"
                           if "type" in spec else f"type: missing (one of {', '.join(GRADER_TYPES)})", "type")
    try:
        parsed = parse_spec(spec)
    except SpecRejected:
        raise
    except GraderSpecError as e:
        raise SpecRejected(str(e), _first_path(str(e))) from None
    if untrusted:
        _check_untrusted(parsed, job_trust().egress if egress is None else egress)
    return parsed


@dataclass
class GraderRun:
    """One sample graded: the grader that graded it and its grade."""

    grader: Grader
    grade: Grade
    judge_model: str | None = None
    """The model the judge was asked for (model graders), OpenAI's ``sampled_model_name``."""

    def to_openai(self) -> dict[str, Any]:
        """OpenAI's ``GraderRunResponse``: reward, per-flag errors with details, scores, sub-rewards."""
        g, messages = self.grade, "; ".join(self.grade.error_messages) or None
        errors: dict[str, Any] = {**dict(g.errors), **{flag: False for flag in OPENAI_ONLY_FLAGS}}
        errors["model_grader_server_error_details"] = messages if g.errors[MODEL_GRADER_SERVER_ERROR] else None
        errors["python_grader_runtime_error_details"] = messages if g.errors[PYTHON_GRADER_RUNTIME_ERROR] else None
        errors["python_grader_server_error_type"] = ("sandbox_unavailable" if g.errors[PYTHON_GRADER_SERVER_ERROR]
                                                     else None)
        return {
            "reward": g.reward,
            "metadata": {
                "name": self.grader.name,
                "type": self.grader.type,
                "errors": errors,
                "execution_time": g.execution_time,
                "scores": dict(g.sub_rewards) or {self.grader.name: g.reward},
                "token_usage": None,
                "sampled_model_name": self.judge_model,
                "error_messages": list(g.error_messages),  # agentrft's: what each flag was raised for
                "grader_version": g.grader_version,
            },
            "sub_rewards": dict(g.sub_rewards),
            "model_grader_token_usage_per_model": {},
        }


def run_grader(spec: dict[str, Any] | str | Path | BaseModel, sample: Trajectory | dict[str, Any] | str,
               item: dict[str, Any] | None = None, *, judge: JudgeClient | JudgeConfig | None = None,
               egress: EgressPolicy | None = None, untrusted: bool = False) -> GraderRun:
    """Grade ``sample`` (OpenAI's ``model_sample`` text, a sample object or a trajectory) against ``item``.

    ``egress`` (default: :func:`agentrft.trust.job_trust`'s) bounds endpoint graders and the judge;
    ``untrusted`` adds the checks in the module docstring. Raises :class:`SpecRejected` for a spec that
    cannot run here; a failure while grading is data on the grade (its error flags), never raised."""
    parsed = validate_grader(spec, untrusted=untrusted, egress=egress)
    egress = job_trust().egress if egress is None else egress
    models = [s for _, s in _walk(parsed) if s.type in MODEL_GRADER_TYPES]
    judge_model = (judge.model if isinstance(judge, JudgeConfig) else None) or (
        parsed.model if parsed.type in MODEL_GRADER_TYPES else None)
    if models and not egress.trusted and (judge is None or isinstance(judge, JudgeConfig)):
        judge = _judge_under(judge or JudgeConfig.from_env(), egress)
    try:
        grader = load_grader(parsed, judge=judge, egress=egress)
    except EgressDenied as e:  # an endpoint URL: _check_untrusted names the field when untrusted
        raise SpecRejected(str(e)) from None
    return GraderRun(grader, grader.grade(sample, item or {}), judge_model)


class RefusedJudge:
    """A judge whose base URL the egress policy refused: every request is a judge server error."""

    def __init__(self, reason: str, config: JudgeConfig) -> None:
        self.reason, self.config = reason, config

    def complete(self, messages: list[dict[str, str]], model: str, params: dict[str, Any]) -> str:
        raise JudgeServerError(self.reason)


def _judge_under(config: JudgeConfig, egress: EgressPolicy) -> JudgeClient:
    config = dataclasses.replace(config, egress=egress)
    try:
        return OpenAIChatJudge(config)
    except EgressDenied as e:
        return RefusedJudge(str(e), config)


def _walk(spec: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """``(path prefix, spec)`` of a spec and every sub-grader of its ``multi`` graders."""
    yield path, spec
    if isinstance(spec, MultiSpec):
        for name, sub in spec.graders.items():
            yield from _walk(sub, f"{path}graders.{name}.")


def _check_untrusted(spec: Any, egress: EgressPolicy) -> None:
    for path, sub in _walk(spec):
        if not isinstance(sub, EndpointSpec):
            continue
        for key, value in sub.headers.items():
            if "${" in value:
                raise SpecRejected(f"{path}headers.{key}: '${{...}}' (an environment variable of the server) is "
                                   "not accepted from an API client; put the value itself in the header",
                                   f"{path}headers.{key}")
        try:
            egress.check_url(sub.url, f"endpoint grader {sub.name!r}")
        except EgressDenied as e:
            raise SpecRejected(f"{path}url: {e}", f"{path}url") from None


def _first_path(message: str) -> str:
    """The first field path in a :func:`parse_spec` error (``invalid grader spec:\\n  PATH: why``)."""
    for line in message.splitlines():
        m = _PATH_LINE.match(line)
        if m and line.startswith(("  ", "<root>")):
            return m.group(1)
    return "<root>"


__all__ = ["GraderRun", "RefusedJudge", "SpecRejected", "run_grader", "validate_grader"]
