"""The graders API, OpenAI-compatible: ``POST /v1/fine_tuning/alpha/graders/validate`` and ``.../run``.

Each route parses its body and calls one library function (:mod:`agentrft.graders.operations`, what
``agentrft grader validate/run`` call too) with ``untrusted=True``, because the server runs graders its API
clients wrote: a spec is taken only as a JSON object (never a file path on the server), ``${...}`` in an
``endpoint`` grader's headers is refused (it would read the server's environment), endpoint URLs and the
judge's base URL must pass the app's egress policy (``app.state.egress``, an
:class:`~agentrft.trust.EgressPolicy`; default the restrictive one: public addresses on the allow-list only),
and ``python`` graders run in the bubblewrap sandbox. The judge of model graders is the operator's
(``app.state.judge``, a :class:`~agentrft.graders.JudgeConfig`; default ``JudgeConfig.from_env()``); a
judge the policy refuses makes those graders flag ``model_grader_server_error``, like one that is down.

Grading runs on a worker thread (a python grader, a judge or an endpoint can take seconds), never on the
event loop. Bad bodies are OpenAI error JSON with status 400 and ``param`` naming the field
(``grader.graders.a.operation``).
"""

from __future__ import annotations

import functools
import json
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request

from agentrft.graders.operations import SpecRejected, run_grader, validate_grader
from agentrft.serving.protocol import APIError
from agentrft.trust import EgressPolicy

router = APIRouter()

_STRICT_EGRESS = EgressPolicy()


@router.post("/v1/fine_tuning/alpha/graders/validate")
async def validate(request: Request) -> dict[str, Any]:
    """OpenAI's ``GraderValidateResponse``: ``{"grader": <the grader as validated, defaults filled in>}``."""
    body = await _body(request)
    spec = _grader(body)
    parsed = await _off_the_loop(validate_grader, spec, untrusted=True, egress=_egress(request))
    return {"grader": parsed.model_dump(mode="json", exclude_none=True)}


@router.post("/v1/fine_tuning/alpha/graders/run")
async def run(request: Request) -> dict[str, Any]:
    """OpenAI's ``GraderRunResponse`` for ``model_sample`` (the output text) graded against ``item``."""
    body = await _body(request)
    spec = _grader(body)
    sample = body.get("model_sample")
    if not isinstance(sample, str):
        raise APIError(400, "model_sample: required, the model's output text (a string)"
                       + ("" if sample is None else f"; got {type(sample).__name__}"), param="model_sample")
    item = body.get("item", {})
    if item is None:
        item = {}
    if not isinstance(item, dict):
        raise APIError(400, f"item: must be a JSON object (the dataset row), got {type(item).__name__}",
                       param="item")
    result = await _off_the_loop(run_grader, spec, sample, item, judge=getattr(request.app.state, "judge", None),
                                 egress=_egress(request), untrusted=True)
    return result.to_openai()


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise APIError(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _grader(body: dict[str, Any]) -> dict[str, Any]:
    spec = body.get("grader")
    if spec is None:
        raise APIError(400, "grader: required (a grader object)", param="grader")
    if not isinstance(spec, dict):
        raise APIError(400, f"grader: must be a grader object, got {type(spec).__name__}", param="grader")
    return spec


def _egress(request: Request) -> EgressPolicy:
    return getattr(request.app.state, "egress", None) or _STRICT_EGRESS


async def _off_the_loop(fn, *args: Any, **kwargs: Any) -> Any:
    """``fn`` on a worker thread; a spec it rejects becomes a 400 naming the field."""
    try:
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))
    except SpecRejected as e:
        param = "grader" if e.path == "<root>" else f"grader.{e.path}"
        raise APIError(400, str(e), param=param) from None


__all__ = ["router"]
