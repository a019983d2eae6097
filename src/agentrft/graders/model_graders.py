"""Model graders (``score_model``, ``label_model``): an LLM judge behind a one-method seam.

The judge is any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM,
SGLang, agentrft's own server...) called with the official ``openai`` SDK.
Where it lives comes from :class:`JudgeConfig`, passed when the grader is
built, defaulting to ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``; the spec's
``model`` is used unless the config overrides it (handy to map a hosted
model name onto a local one without editing -- and re-versioning -- the spec).

Extension point: graders talk to a :class:`JudgeClient` (``complete(messages,
model, params) -> str``). :class:`OpenAIChatJudge` is the real one; an
in-process local-model judge can implement the same protocol and be passed
as ``judge=`` to :func:`agentrft.graders.load_grader` -- none is provided yet.

Departures from the hosted graders, both documented because they change
what the judge sees:

* hosted OpenAI constrains the judge's output format itself; a generic
  endpoint may not support structured outputs, so (unless
  ``JudgeConfig.format_instructions`` is off) a final system message asks for
  ``{"result": ...}``;
* ``developer`` messages are sent as ``system`` (many servers reject the role).

Parsing is strict on purpose, because a lenient parser is a reward hack
waiting to happen: a score is a JSON number, a JSON object's
``result``/``score``, or a bare number; a label must be one of ``labels``.
Anything else flags ``model_grader_parse_error``; a transport or HTTP failure
flags ``model_grader_server_error``. Scores outside ``range`` are clamped.

Bounds: the SDK's HTTP client is a
:class:`~agentrft.tools.http_limits.LimitedAsyncClient`, so ``timeout_s`` is a
total deadline for each request (connect, headers and the whole reply) and a
reply longer than ``max_reply_bytes`` is not read further; either one is a
``model_grader_server_error`` for that sample (after the SDK's own retries,
``max_retries``). The SDK's async client is awaited from the grading thread
(:func:`~agentrft.tools.http_limits.run_blocking_http`), because only
cancellation stops a blocked read at the deadline.

Egress: ``JudgeConfig.egress`` (an :class:`~agentrft.trust.EgressPolicy`,
trusted by default) vets the judge's base URL when the judge is built -- a
refused one is :class:`~agentrft.trust.EgressDenied` before any connection --
and again as each request is sent.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from agentrft.graders.base import MODEL_GRADER_PARSE_ERROR, MODEL_GRADER_SERVER_ERROR, Grader, GradingFailure
from agentrft.graders.spec import JudgeMessage, LabelModelSpec, SamplingParamsSpec, ScoreModelSpec
from agentrft.graders.templates import render
from agentrft.tools.http_limits import LimitedAsyncClient, run_blocking_http
from agentrft.trust import TRUSTED_EGRESS, EgressPolicy


@dataclass(frozen=True)
class JudgeConfig:
    """Where the judge model is served."""

    base_url: str | None = None  # default: OPENAI_BASE_URL, else OpenAI's API
    api_key: str | None = None  # default: OPENAI_API_KEY, else "EMPTY" (local servers accept any key)
    model: str | None = None  # overrides the spec's model when set
    timeout_s: float = 60.0  # total deadline of each request: connect, headers and the whole reply
    max_retries: int = 2  # the SDK's own retries (connection errors, timeouts, 408/409/429/5xx)
    max_reply_bytes: int = 1_000_000  # a longer reply is not read further: a server error
    format_instructions: bool = True  # append the output-format system message
    egress: EgressPolicy = TRUSTED_EGRESS  # where base_url may point (agentrft.trust): a server's is restrictive

    @classmethod
    def from_env(cls, **overrides: Any) -> "JudgeConfig":
        return cls(
            base_url=overrides.pop("base_url", None) or os.environ.get("OPENAI_BASE_URL"),
            api_key=overrides.pop("api_key", None) or os.environ.get("OPENAI_API_KEY"),
            **overrides,
        )


class JudgeServerError(Exception):
    """The judge could not be reached or answered with an error."""


class JudgeClient(Protocol):
    """The judge seam: one chat completion, returning the assistant's text."""

    def complete(self, messages: list[dict[str, str]], model: str, params: dict[str, Any]) -> str: ...


class OpenAIChatJudge:
    """A :class:`JudgeClient` on any OpenAI-compatible chat-completions endpoint."""

    def __init__(self, config: JudgeConfig | None = None):
        self.config = JudgeConfig.from_env() if config is None else config
        self._transport = self.config.egress.guard(
            self.config.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1", "judge")
        self._client = None
        self._client_lock = threading.Lock()

    @property
    def client(self):
        """The SDK's ``AsyncOpenAI`` client (used on the HTTP loop only)."""
        with self._client_lock:
            if self._client is None:
                import openai

                self._client = openai.AsyncOpenAI(
                    base_url=self.config.base_url or os.environ.get("OPENAI_BASE_URL"),
                    api_key=self.config.api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
                    timeout=self.config.timeout_s,
                    max_retries=self.config.max_retries,
                    http_client=LimitedAsyncClient(max_reply_bytes=self.config.max_reply_bytes,
                                                   timeout=self.config.timeout_s, transport=self._transport),
                )
            return self._client

    def complete(self, messages: list[dict[str, str]], model: str, params: dict[str, Any]) -> str:
        import openai

        request = self.client.chat.completions.create(model=self.config.model or model, messages=messages, **params)
        try:
            response = run_blocking_http(request)
        except openai.APIError as e:
            cause = f" ({type(e.__cause__).__name__}: {e.__cause__})" if e.__cause__ is not None else ""
            raise JudgeServerError(f"{type(e).__name__}: {e}{cause}") from None
        if not response.choices:
            raise JudgeServerError("the judge returned no choices")
        message = response.choices[0].message
        if getattr(message, "refusal", None):
            return f"[refusal] {message.refusal}"
        return message.content or ""


def sampling_kwargs(params: SamplingParamsSpec | None) -> dict[str, Any]:
    """OpenAI ``sampling_params`` -> chat-completions keyword arguments."""
    if params is None:
        return {}
    out: dict[str, Any] = {}
    for key in ("temperature", "top_p", "seed", "reasoning_effort"):
        value = getattr(params, key)
        if value is not None:
            out[key] = value
    if params.max_completions_tokens is not None:
        out["max_completion_tokens"] = params.max_completions_tokens
    return out


def render_messages(messages: list[JudgeMessage], sample: dict[str, Any], item: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    for m in messages:
        if isinstance(m.content, str):
            parts = [m.content]
        else:
            parts = [p.text for p in (m.content if isinstance(m.content, list) else [m.content])]
        text = "\n".join(render(p, sample, item) for p in parts)
        out.append({"role": "system" if m.role == "developer" else m.role, "content": text})
    return out


# -- parsing judge output -------------------------------------------------------------

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)


def _unfence(text: str) -> str:
    text = text.strip()
    m = _FENCE.match(text)
    return m.group(1).strip() if m else text


def parse_score(text: str) -> float:
    """A judge's score: a JSON number, a JSON object's ``result``/``score``, or a bare number."""
    body = _unfence(text)
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        data = float(body) if re.fullmatch(_NUMBER, body) else None
    if isinstance(data, dict):
        data = next((data[k] for k in ("result", "score") if k in data), None)
    if isinstance(data, str) and re.fullmatch(_NUMBER, data.strip()):
        data = float(data)
    if isinstance(data, bool) or not isinstance(data, int | float) or not math.isfinite(data):
        raise ValueError(f"judge output is not a score: {text[:200]!r}")
    return float(data)


def parse_label(text: str, labels: list[str]) -> str:
    """A judge's label: a JSON object's ``result``/``label``, or the text itself, matching one of ``labels``."""
    body = _unfence(text)
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        data = body
    if isinstance(data, dict):
        data = data.get("result", data.get("label"))
    if not isinstance(data, str):
        raise ValueError(f"judge output is not a label: {text[:200]!r}")
    answer = data.strip().strip("\"'`.*").strip()
    for label in labels:
        if answer == label:
            return label
    folded = [label for label in labels if label.casefold() == answer.casefold()]
    if len(folded) == 1:
        return folded[0]
    raise ValueError(f"judge answered {answer[:100]!r}, not one of {labels}")


# -- graders ------------------------------------------------------------------------------


class _ModelGrader(Grader):
    def __init__(self, spec: ScoreModelSpec | LabelModelSpec, judge: JudgeClient | JudgeConfig | None = None):
        super().__init__(spec)
        self.judge: JudgeClient = judge if hasattr(judge, "complete") else OpenAIChatJudge(judge)  # type: ignore[arg-type]

    def _format_instruction(self) -> str:
        raise NotImplementedError

    def ask(self, sample: dict[str, Any], item: dict[str, Any]) -> str:
        messages = render_messages(self.spec.input, sample, item)
        config = getattr(self.judge, "config", None)
        if config is None or config.format_instructions:
            messages.append({"role": "system", "content": self._format_instruction()})
        try:
            return self.judge.complete(messages, self.spec.model, sampling_kwargs(self.spec.sampling_params))
        except JudgeServerError as e:
            raise GradingFailure(MODEL_GRADER_SERVER_ERROR, str(e)) from None


class ScoreModelGrader(_ModelGrader):
    spec: ScoreModelSpec

    @property
    def reward_range(self) -> tuple[float, float]:  # type: ignore[override]
        return tuple(self.spec.range)  # type: ignore[return-value]

    def _format_instruction(self) -> str:
        lo, hi = self.spec.range
        return f'Respond with only a JSON object {{"result": <score>}} where <score> is a number from {lo:g} to {hi:g}.'

    def score(self, sample: dict[str, Any], item: dict[str, Any]) -> float:
        text = self.ask(sample, item)
        try:
            value = parse_score(text)
        except ValueError as e:
            raise GradingFailure(MODEL_GRADER_PARSE_ERROR, str(e)) from None
        lo, hi = self.spec.range
        return min(hi, max(lo, value))


class LabelModelGrader(_ModelGrader):
    spec: LabelModelSpec

    def _format_instruction(self) -> str:
        return 'Respond with only a JSON object {"result": <label>} where <label> is one of ' + json.dumps(self.spec.labels) + "."

    def score(self, sample: dict[str, Any], item: dict[str, Any]) -> float:
        text = self.ask(sample, item)
        try:
            label = parse_label(text, self.spec.labels)
        except ValueError as e:
            raise GradingFailure(MODEL_GRADER_PARSE_ERROR, str(e)) from None
        return 1.0 if label in self.spec.passing_labels else 0.0
