"""Data contracts shared by every part of agentrft.

These are the stable heart of the system (see docs/architecture.md):

* a **task row** is a plain dict in OpenAI's RFT dataset format
  (``messages``, optional ``tools``, any other keys are reference fields);
* a **message** is a plain dict in OpenAI chat format (``role``, ``content``,
  optional ``tool_calls`` / ``tool_call_id``), so rows and trajectories can be
  exchanged with OpenAI-compatible tooling unchanged;
* a **Trajectory** is what one rollout produced, including the exact token
  record: every token carries its kind (``prompt`` | ``sampled`` | ``env``)
  and only ``sampled`` tokens are ever trained on;
* a **Grade** is the reward for one trajectory with per-grader sub-rewards and
  OpenAI-named error flags.

Everything here is a dataclass with ``to_dict`` / ``from_dict`` so it can be
written to JSONL and read back losslessly.
"""

from __future__ import annotations

import enum
import json
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Message = dict[str, Any]
TaskRow = dict[str, Any]

TokenKind = Literal["prompt", "sampled", "env"]
TOKEN_KINDS: tuple[TokenKind, ...] = ("prompt", "sampled", "env")


class StopReason(str, enum.Enum):
    """Why a rollout ended."""

    ANSWER = "answer"  # assistant turn without tool calls: the final answer
    TOOL_CALLS_OUTPUT = "tool_calls_output"  # schema-only tools: the calls are the output
    MAX_TURNS = "max_turns"
    MAX_TOKENS = "max_tokens"  # total token budget of the rollout exhausted
    CONTEXT_LIMIT = "context_limit"  # the model's context window is full
    ENV_DONE = "env_done"  # the environment declared the episode finished
    INFRA_ERROR = "infra_error"  # infrastructure failed; excluded from training


class ToolErrorKind(str, enum.Enum):
    """Typed failures of a tool call. Each is shown to the model and recorded."""

    PARSE_ERROR = "parse_error"  # the model's tool-call text was malformed
    UNKNOWN_TOOL = "unknown_tool"
    INVALID_ARGUMENTS = "invalid_arguments"  # failed JSON-schema validation
    TIMEOUT = "timeout"
    BUDGET_EXCEEDED = "budget_exceeded"  # per-rollout call budget used up
    EXCEPTION = "exception"  # the tool raised
    GUARDRAIL = "guardrail"  # a policy (allow-list, per-tool cap, ...) refused it
    TOOL_ERROR = "tool_error"  # the tool reported an error itself (e.g. HTTP 4xx)
    INFRASTRUCTURE = "infrastructure"  # transport failed after retries (not the model's fault)
    SCHEMA_VIOLATION = "schema_violation"  # a schema-only call's arguments fall outside its schema (kept, graded)


@dataclass
class ToolCall:
    """One function call requested by the assistant.

    ``arguments`` is the decoded JSON object; ``raw_arguments`` keeps the exact
    text when the call came from a model (useful when decoding failed).
    """

    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:12])

    def to_openai(self) -> dict[str, Any]:
        """OpenAI chat-format ``tool_calls`` entry (arguments as a JSON string)."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)},
        }

    @classmethod
    def from_openai(cls, d: dict[str, Any]) -> "ToolCall":
        fn = d.get("function", d)
        args = fn.get("arguments", {})
        if isinstance(args, str):
            args = json.loads(args) if args.strip() else {}
        return cls(name=fn["name"], arguments=args, id=d.get("id") or "call_" + uuid.uuid4().hex[:12])


@dataclass
class ToolError:
    kind: ToolErrorKind
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "message": self.message}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ToolError":
        return cls(kind=ToolErrorKind(d["kind"]), message=d["message"])


@dataclass
class ToolCallRecord:
    """A tool call as executed: what was asked, what came back, how long it took."""

    call: ToolCall
    turn: int
    result: str | None = None  # text shown to the model (the error text if it failed)
    error: ToolError | None = None
    latency_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.call.id,
            "name": self.call.name,
            "arguments": self.call.arguments,
            "turn": self.turn,
            "result": self.result,
            "error": self.error.to_dict() if self.error else None,
            "latency_s": self.latency_s,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ToolCallRecord":
        return cls(
            call=ToolCall(name=d["name"], arguments=d["arguments"], id=d["id"]),
            turn=d["turn"],
            result=d.get("result"),
            error=ToolError.from_dict(d["error"]) if d.get("error") else None,
            latency_s=d.get("latency_s", 0.0),
        )


@dataclass
class TrajectoryError:
    """A non-tool failure recorded on a trajectory (sampler, environment set-up, ...)."""

    kind: str
    message: str
    turn: int | None = None


@dataclass
class Trajectory:
    """Everything one rollout produced.

    Token record invariants (checked by :meth:`validate`):
    ``len(token_ids) == len(token_kinds) == len(logprobs)``; ``logprobs[i]`` is
    the sampling log-probability for ``sampled`` tokens and ``None`` otherwise.
    """

    task_id: str
    messages: list[Message]
    token_ids: list[int] = field(default_factory=list)
    token_kinds: list[TokenKind] = field(default_factory=list)
    logprobs: list[float | None] = field(default_factory=list)
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    turns: int = 0
    stop_reason: StopReason | None = None
    errors: list[TrajectoryError] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    trace_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    group_index: int = 0  # which sample of its task's group this is
    metadata: dict[str, Any] = field(default_factory=dict)
    policy_version: int | None = None
    """Optimizer updates applied to the weights that sampled it (a training run's rollouts; None elsewhere, and
    in records written before the field): the distance to the trainer's current version is how off-policy it is."""

    # -- token record ---------------------------------------------------------
    def append_tokens(self, ids: list[int], kind: TokenKind, logprobs: list[float] | None = None) -> None:
        if kind == "sampled":
            if logprobs is None or len(logprobs) != len(ids):
                raise ValueError("sampled tokens need one logprob each")
            self.logprobs.extend(float(x) for x in logprobs)
        else:
            self.logprobs.extend([None] * len(ids))
        self.token_ids.extend(int(t) for t in ids)
        self.token_kinds.extend([kind] * len(ids))

    def validate(self) -> None:
        n = len(self.token_ids)
        if len(self.token_kinds) != n or len(self.logprobs) != n:
            raise ValueError("token_ids, token_kinds and logprobs must have equal length")
        for kind, lp in zip(self.token_kinds, self.logprobs):
            if kind not in TOKEN_KINDS:
                raise ValueError(f"unknown token kind {kind!r}")
            if (kind == "sampled") != (lp is not None):
                raise ValueError("logprobs must be set exactly on sampled tokens")

    @property
    def num_sampled_tokens(self) -> int:
        return sum(1 for k in self.token_kinds if k == "sampled")

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    # -- views that graders read ----------------------------------------------
    @property
    def final_message(self) -> Message | None:
        for m in reversed(self.messages):
            if m.get("role") == "assistant":
                return m
        return None

    @property
    def output_text(self) -> str:
        m = self.final_message
        return (m.get("content") or "") if m else ""

    @property
    def output_tools(self) -> list[dict[str, Any]]:
        """Tool calls of the final assistant message (OpenAI ``tool_calls`` shape)."""
        m = self.final_message
        return list(m.get("tool_calls") or []) if m else []

    @property
    def num_tool_errors(self) -> int:
        return sum(1 for r in self.tool_calls if r.error is not None)

    @property
    def is_infra_failure(self) -> bool:
        return self.stop_reason == StopReason.INFRA_ERROR

    # -- serialisation ----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tool_calls"] = [r.to_dict() for r in self.tool_calls]
        d["stop_reason"] = self.stop_reason.value if self.stop_reason else None
        d["errors"] = [asdict(e) for e in self.errors]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Trajectory":
        d = dict(d)
        d["tool_calls"] = [ToolCallRecord.from_dict(r) for r in d.get("tool_calls", [])]
        d["stop_reason"] = StopReason(d["stop_reason"]) if d.get("stop_reason") else None
        d["errors"] = [TrajectoryError(**e) for e in d.get("errors", [])]
        return cls(**d)


@dataclass
class Grade:
    """A grader's verdict on one sample, shaped like OpenAI's ``graders/run`` result."""

    reward: float
    sub_rewards: dict[str, float] = field(default_factory=dict)
    errors: dict[str, bool] = field(default_factory=dict)  # OpenAI error flag names -> set
    error_messages: list[str] = field(default_factory=list)
    grader_version: str = ""
    execution_time: float = 0.0
    turn_rewards: list[float] | None = None
    """Optional split of ``reward`` over the assistant turns (one value per turn, summing to ``reward``),
    read by ``rft.credit: per_turn``: e.g. a wasted tool call's cost on the turn that made it."""

    @property
    def has_error(self) -> bool:
        return any(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        extra = {} if self.turn_rewards is None else {"turn_rewards": list(self.turn_rewards)}
        return {
            **extra,
            "reward": self.reward,
            "sub_rewards": dict(self.sub_rewards),
            "metadata": {
                "errors": dict(self.errors),
                "error_messages": list(self.error_messages),
                "execution_time": self.execution_time,
                "grader_version": self.grader_version,
            },
        }
