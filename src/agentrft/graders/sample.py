"""The ``sample`` namespace graders read, built from a Trajectory or a plain dict.

OpenAI's graders see a *sample* with ``output_text``, ``output_json`` (the
output parsed as JSON) and ``output_tools`` (the final message's tool calls).
agentrft samples are trajectories, so a sample built from one adds a
``trajectory`` summary -- ``tool_calls`` (count), ``tool_errors``, ``turns``,
``tokens``, ``latency_s`` plus ``tool_names`` -- which templates
(``{{sample.trajectory.tool_calls}}``), python graders and the operational
graders read. A plain dict (what OpenAI's ``graders/run`` accepts) works
unchanged; it may carry its own ``trajectory`` dict.

The sample is a plain JSON-able dict so it can cross the process boundary to
python graders and the HTTP boundary to endpoint graders as-is.
"""

from __future__ import annotations

import json
from typing import Any

from agentrft.types import Trajectory

SampleDict = dict[str, Any]


class SampleError(ValueError):
    """The sample cannot be read as a grader sample (OpenAI flag ``sample_parse_error``)."""

    flag = "sample_parse_error"


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, TypeError, RecursionError):  # also a number past 4300 digits, nesting past the limit
        return None


def trajectory_summary(traj: Trajectory) -> dict[str, Any]:
    """The operational facts of a rollout, as the ``sample.trajectory`` namespace."""
    return {
        "tool_calls": len(traj.tool_calls),
        "tool_errors": traj.num_tool_errors,
        "turns": traj.turns,
        "tokens": traj.num_tokens,
        "sampled_tokens": traj.num_sampled_tokens,
        "latency_s": float(traj.timings.get("total_s", 0.0)),
        "tool_names": [r.call.name for r in traj.tool_calls],
        "stop_reason": traj.stop_reason.value if traj.stop_reason else None,
    }


def build_sample(sample: Trajectory | SampleDict | str) -> SampleDict:
    """Normalise what a grader is given into the sample dict.

    A string is taken as ``output_text``. ``output_json`` is filled by parsing
    ``output_text`` when absent (``None`` if it is not JSON; templates that
    ask for it then flag ``sample_parse_error``).
    """
    if isinstance(sample, Trajectory):
        text = sample.output_text
        return {
            "output_text": text,
            "output_json": _parse_json(text),
            "output_tools": sample.output_tools,
            "trajectory": trajectory_summary(sample),
            "trace_id": sample.trace_id,
        }
    if isinstance(sample, str):
        sample = {"output_text": sample}
    if not isinstance(sample, dict):
        raise SampleError(f"a sample must be a Trajectory or a dict, got {type(sample).__name__}")
    out = dict(sample)
    text = out.get("output_text")
    if text is None:
        text = "" if out.get("output_json") is None else json.dumps(out["output_json"])
    if not isinstance(text, str):
        raise SampleError(f"sample.output_text must be a string, got {type(text).__name__}")
    out["output_text"] = text
    if out.get("output_json") is None:
        out["output_json"] = _parse_json(text)
    out.setdefault("output_tools", [])
    if not isinstance(out["output_tools"], list):
        raise SampleError("sample.output_tools must be a list")
    return out
