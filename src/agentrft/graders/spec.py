"""Grader specs: OpenAI's grader JSON, validated strictly with pydantic v2.

Users arriving from OpenAI's hosted RFT bring their grader JSON unchanged, so
every OpenAI grader type (``string_check``, ``text_similarity``, ``python``,
``score_model``, ``label_model``, ``multi``) is modelled field for field.
Unknown fields are an error (``extra="forbid"``) reported with their path
(``graders.accuracy.operation``), never silently ignored: a typo in a grader
would otherwise change the reward without anyone noticing.

Two departures, both additive:

* ``name`` defaults to the grader's type (OpenAI requires it; accepting its
  absence costs nothing and keeps hand-written specs short);
* agentrft extension types: ``endpoint`` (an HTTP grading service) and the
  operational graders ``tool_calls``, ``latency``, ``tokens``,
  ``tool_errors`` that read the trajectory, so cost can be part of a
  continuous reward via ``multi``.

A spec's version is the sha256 of its normalised JSON (defaults filled in,
``None`` dropped, keys sorted), so two specs that grade identically share a
version and any edit -- including one character of python source -- changes it.
"""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from agentrft.errors import GraderSpecError
from agentrft.graders.formula import FormulaError, parse_formula

SIMILARITY_METRICS = (
    "fuzzy_match",
    "bleu",
    "gleu",
    "meteor",
    "cosine",
    "rouge_1",
    "rouge_2",
    "rouge_3",
    "rouge_4",
    "rouge_5",
    "rouge_l",
)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- OpenAI grader types --------------------------------------------------------


class StringCheckSpec(_Spec):
    """Compare two templated strings: ``eq``/``ne`` exactly, ``like`` (contains) / ``ilike`` (contains, any case)."""

    type: Literal["string_check"]
    name: str = "string_check"
    input: str
    reference: str
    operation: Literal["eq", "ne", "like", "ilike"]


class TextSimilaritySpec(_Spec):
    """Similarity of two templated strings with a named metric; reward is the metric in [0, 1]."""

    type: Literal["text_similarity"]
    name: str = "text_similarity"
    input: str
    reference: str
    evaluation_metric: Literal[SIMILARITY_METRICS]  # type: ignore[valid-type]
    pass_threshold: float | None = None  # as in OpenAI eval testing criteria: the pass/fail cut, not the reward


class PythonSpec(_Spec):
    """``source`` defines ``grade(sample, item) -> float``; run in an isolated subprocess."""

    type: Literal["python"]
    name: str = "python"
    source: str
    image_tag: str | None = None  # accepted for compatibility; the local interpreter runs the code

    @field_validator("source")
    @classmethod
    def _defines_grade(cls, source: str) -> str:
        try:
            tree = ast.parse(source)  # parsing never executes the code
        except SyntaxError as e:
            raise ValueError(f"python source does not parse: {e.msg} (line {e.lineno})") from None
        except (MemoryError, RecursionError):  # what CPython's parser raises for very deep nesting
            raise ValueError("python source does not parse: it nests too deeply") from None
        if not any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == "grade" for n in tree.body):
            raise ValueError("python source must define a top-level function grade(sample, item)")
        return source


class InputTextPart(_Spec):
    type: Literal["input_text", "output_text", "text"]
    text: str


class JudgeMessage(_Spec):
    """One message of a model grader's prompt; text content may hold ``{{ }}`` templates."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | InputTextPart | list[InputTextPart]
    type: Literal["message"] | None = None


class SamplingParamsSpec(_Spec):
    """OpenAI's ``sampling_params`` for model graders (note OpenAI's spelling ``max_completions_tokens``)."""

    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    max_completions_tokens: int | None = Field(default=None, gt=0)
    reasoning_effort: str | None = None


class ScoreModelSpec(_Spec):
    """A judge model returns a numeric score, clamped into ``range``."""

    type: Literal["score_model"]
    name: str = "score_model"
    model: str
    input: list[JudgeMessage] = Field(min_length=1)
    range: tuple[float, float] = (0.0, 1.0)
    sampling_params: SamplingParamsSpec | None = None

    @field_validator("range")
    @classmethod
    def _ordered(cls, r: tuple[float, float]) -> tuple[float, float]:
        if not r[0] < r[1]:
            raise ValueError(f"range must be [low, high] with low < high, got {list(r)}")
        return r


class LabelModelSpec(_Spec):
    """A judge model picks one of ``labels``; reward 1 when it is in ``passing_labels``."""

    type: Literal["label_model"]
    name: str = "label_model"
    model: str
    input: list[JudgeMessage] = Field(min_length=1)
    labels: list[str] = Field(min_length=1)
    passing_labels: list[str] = Field(min_length=1)
    sampling_params: SamplingParamsSpec | None = None

    @model_validator(mode="after")
    def _passing_subset(self) -> "LabelModelSpec":
        unknown = [p for p in self.passing_labels if p not in self.labels]
        if unknown:
            raise ValueError(f"passing_labels {unknown} are not in labels {self.labels}")
        return self


class MultiSpec(_Spec):
    """Named sub-graders combined by an arithmetic ``calculate_output`` formula."""

    type: Literal["multi"]
    name: str = "multi"
    graders: dict[str, "GraderSpec"] = Field(min_length=1)
    calculate_output: str

    @model_validator(mode="after")
    def _formula_uses_known_graders(self) -> "MultiSpec":
        for key in self.graders:
            if not key.isidentifier():
                raise ValueError(f"sub-grader name {key!r} must be an identifier to be usable in calculate_output")
        try:
            formula = parse_formula(self.calculate_output)
        except FormulaError as e:
            raise ValueError(f"calculate_output: {e}") from None
        unknown = sorted(formula.variables - set(self.graders))
        if unknown:
            raise ValueError(f"calculate_output uses {unknown}, which are not sub-graders ({sorted(self.graders)})")
        return self


# -- agentrft extension types ---------------------------------------------------


class EndpointSpec(_Spec):
    """POST ``{sample, item, trace_id}`` to ``url``; the service answers ``{"score": float}``.

    Header values may reference environment variables as ``${NAME}`` so that
    secrets stay out of the spec (and out of its version hash).
    """

    type: Literal["endpoint"]
    name: str = "endpoint"
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(default=30.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    backoff_s: float = Field(default=0.5, ge=0)
    rate_limit_per_s: float | None = Field(default=None, gt=0)
    range: tuple[float, float] | None = None

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return url


class _CostSpec(_Spec):
    """Reward 1 at or below ``target``, falling linearly to 0 at ``budget``."""

    @model_validator(mode="after")
    def _budget_above_target(self):
        try:
            target, budget = self.bounds()
        except OverflowError:  # an integer too large for a float (JSON allows any number of digits)
            raise ValueError("target and budget must be below 1e308") from None
        if not budget > target:
            raise ValueError(f"budget ({budget}) must be greater than target ({target})")
        return self

    def bounds(self) -> tuple[float, float]:
        return float(self.target), float(self.budget)  # type: ignore[attr-defined]


class ToolCallsSpec(_CostSpec):
    type: Literal["tool_calls"]
    name: str = "tool_calls"
    target: int = Field(default=0, ge=0)
    budget: int = Field(gt=0)


class ToolErrorsSpec(_CostSpec):
    type: Literal["tool_errors"]
    name: str = "tool_errors"
    target: int = Field(default=0, ge=0)
    budget: int = Field(gt=0)


class TokensSpec(_CostSpec):
    type: Literal["tokens"]
    name: str = "tokens"
    target: int = Field(ge=0)
    budget: int = Field(gt=0)


class LatencySpec(_CostSpec):
    type: Literal["latency"]
    name: str = "latency"
    target_s: float = Field(ge=0)
    budget_s: float = Field(gt=0)

    def bounds(self) -> tuple[float, float]:
        return float(self.target_s), float(self.budget_s)


GraderSpec = Annotated[
    Union[
        StringCheckSpec,
        TextSimilaritySpec,
        PythonSpec,
        ScoreModelSpec,
        LabelModelSpec,
        MultiSpec,
        EndpointSpec,
        ToolCallsSpec,
        ToolErrorsSpec,
        TokensSpec,
        LatencySpec,
    ],
    Field(discriminator="type"),
]
MultiSpec.model_rebuild()

GRADER_TYPES: tuple[str, ...] = (
    "string_check",
    "text_similarity",
    "python",
    "score_model",
    "label_model",
    "multi",
    "endpoint",
    "tool_calls",
    "tool_errors",
    "tokens",
    "latency",
)
_ADAPTER: TypeAdapter = TypeAdapter(GraderSpec)


# -- parsing --------------------------------------------------------------------


def _field_path(raw: Any, loc: tuple) -> str:
    """Turn pydantic's error location into the path a user sees in their JSON.

    Discriminated unions insert the tag (``"string_check"``) into ``loc``;
    walking the raw input tells a tag from a real key of the same name.
    """
    parts: list[str] = []
    node = raw
    for elem in loc:
        if isinstance(node, dict) and elem in node:
            parts.append(str(elem))
            node = node[elem]
        elif isinstance(node, list) and isinstance(elem, int) and 0 <= elem < len(node):
            parts.append(f"[{elem}]")
            node = node[elem]
        elif isinstance(node, dict) and elem == node.get("type"):
            continue  # the union's tag
        else:
            parts.append(str(elem))
            node = None
    return ".".join(parts).replace(".[", "[") or "<root>"


def parse_spec(spec: dict[str, Any] | BaseModel) -> GraderSpec:
    """Validate a grader spec dict; raise :class:`GraderSpecError` naming each bad field's path."""
    if isinstance(spec, BaseModel):
        return spec  # type: ignore[return-value]
    if not isinstance(spec, dict):
        raise GraderSpecError(f"a grader spec must be a JSON object, got {type(spec).__name__}")
    if "type" not in spec:
        raise GraderSpecError("<root>: missing 'type' (one of " + ", ".join(GRADER_TYPES) + ")")
    try:
        return _ADAPTER.validate_python(spec)
    except ValidationError as e:
        lines = [f"{_field_path(spec, tuple(err['loc']))}: {err['msg']}" for err in e.errors()]
        raise GraderSpecError("invalid grader spec:\n  " + "\n  ".join(lines)) from None


def read_spec(path: str | Path) -> dict[str, Any]:
    """Read a grader spec JSON file (a dict), with a clear error on bad JSON."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise GraderSpecError(f"grader spec file not found: {p}") from None
    except OSError as e:  # a directory (the path "" is "."), a device, no permission
        raise GraderSpecError(f"cannot read grader spec file {p}: {e.strerror or e}") from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise GraderSpecError(f"{p}: not valid JSON: {e}") from None
    except ValueError as e:  # a number past int()'s 4300 digits, or text that is not UTF-8
        raise GraderSpecError(f"{p}: not valid JSON: {str(e).split(';')[0][:200]}") from None
    return data


def normalised_spec(spec: dict[str, Any] | BaseModel) -> dict[str, Any]:
    """The canonical JSON form: validated, defaults filled in, ``None`` dropped."""
    return parse_spec(spec).model_dump(mode="json", exclude_none=True)


def grader_version(spec: dict[str, Any] | BaseModel, length: int = 16) -> str:
    """Content hash of the normalised spec (sorted keys, python source included)."""
    text = json.dumps(normalised_spec(spec), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]
