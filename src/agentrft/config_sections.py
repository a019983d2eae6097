"""The operational sections of :class:`agentrft.config.JobConfig`: where a job samples and runs its rollouts,
what it writes (metric sinks, privacy), its live monitors and the prompt it applies. Re-exported by
:mod:`agentrft.config`, the one place configs are loaded."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, use_enum_values=False, use_attribute_docstrings=True)


class WandbSinkConfig(_Section):
    """Weights & Biases, offline only: the run's metrics as a local W&B run that ``wandb sync DIR`` can upload
    later. agentrft never logs in or sends anything over the network (``online`` is refused)."""

    mode: str = "offline"
    """``offline`` (write the W&B run files locally) or ``disabled`` (keep the section, write nothing)."""
    project: str = "agentrft"
    """W&B project name recorded in the offline run (used when it is synced)."""
    dir: str | None = None
    """Folder in which W&B makes its ``wandb/`` folder of ``offline-run-*`` runs; default the run directory
    (so ``RUN_DIR/wandb``)."""

    @field_validator("mode")
    @classmethod
    def _offline_only(cls, mode: str) -> str:
        if mode not in ("offline", "disabled"):
            raise ValueError(f"{mode!r}: only 'offline' or 'disabled'; agentrft never sends metrics over the "
                             "network (upload an offline run with `wandb sync DIR`)")
        return mode


class SinksConfig(_Section):
    """Where step and validation metrics go besides ``run.db``, which stays the source of truth. A sink that
    fails to write is switched off with a ``sink_failed`` event; it never fails the run."""

    tensorboard: bool = False
    """Write TensorBoard event files to ``RUN_DIR/tensorboard`` (needs ``tensorboardX``)."""
    wandb: WandbSinkConfig | None = None
    """Write an offline Weights & Biases run (needs ``wandb``); unset: no W&B."""


class SamplerConfig(_Section):
    """Which sampler a job's rollouts use: the local model, or an OpenAI-compatible completions server.

    With a remote backend a training job pushes its LoRA adapter to the server before the first rollout and
    after every update, and its rollouts request it by ``model`` (:mod:`agentrft.train.weight_sync`,
    docs/scale.md). Defined here, with the other config sections, and re-exported by
    :mod:`agentrft.rollout.openai_compat_sampler`, which builds the client."""

    backend: Literal["local", "openai_compat", "vllm"] = "local"
    """``local``: sample from the policy in-process (:class:`~agentrft.rollout.hf_sampler.HFSampler`).
    ``openai_compat``: POST /v1/completions of ``url`` (``agentrft serve``, vLLM, any server with vLLM's
    token-id fields). ``vllm``: the same client; names the server kind in the record."""
    url: str | None = None
    """The server's base URL including ``/v1``, e.g. ``http://127.0.0.1:8000/v1``. Required unless local."""
    model: str | None = None
    """The ``model`` to request: the served name, or a LoRA adapter loaded on the server. Required unless local.
    In a training job, the name the run's adapter is loaded under (each push replaces it): not the server's
    served name, and one per run when runs share a server."""
    api_key_env: str | None = None
    """Name of the environment variable holding the bearer token (the key itself never goes in a config)."""
    timeout_s: float = Field(600.0, gt=0)
    """Longest a single completions request may take (connecting: at most 10 s of it)."""
    max_context: int | None = Field(None, ge=2)
    """Prompt + completion tokens per sequence; default: the server's ``max_model_len`` from ``GET /v1/models``."""
    sync_dir: str | None = None
    """Training: the folder each pushed adapter is saved in (a new sub-folder per push); default
    ``RUN_DIR/sync``. The server reads it at the same path: for ``agentrft serve`` it must lie inside its
    ``--lora-root``."""
    sync_attempts: int = Field(3, ge=1)
    """Training: tries per push when the server cannot be reached or answers a 5xx (1 s, 2 s, 4 s, ... apart);
    then the run stops rather than train on while the server samples older weights."""

    @model_validator(mode="after")
    def _remote_needs_url_and_model(self) -> "SamplerConfig":
        if self.backend != "local" and (not self.url or not self.model):
            raise ValueError(f"sampler.backend {self.backend!r} needs sampler.url and sampler.model")
        if self.backend == "local" and (self.url or self.model or self.api_key_env or self.sync_dir):
            raise ValueError("sampler.url, sampler.model, sampler.api_key_env and sampler.sync_dir only apply to a "
                             "remote backend")
        return self


class RuntimeConfig(_Section):
    """Where rollouts (environment instances, tool calls, grading) run: this process, or Ray actors
    (:mod:`agentrft.runtime`). The same job config runs either way."""

    backend: Literal["local", "ray"] = "local"
    """``local``: in the trainer's process. ``ray``: ``rollout_workers`` Ray actors; ``address`` (or the
    ``RAY_ADDRESS`` environment variable) names a cluster, otherwise ``ray.init()`` starts a local one. On Ray
    each rollout plays on its own with the seeds of ``rollout.mode: per_episode`` (whatever the mode says) and
    samples over HTTP: from the ``sampler`` server, or with ``sampler.backend: local`` from the trainer's own
    policy on a loopback port. RFT's rollouts only: the periodic eval runs in the trainer."""
    rollout_workers: int = Field(2, ge=1)
    """Ray actors that roll out and grade; a step's tasks are spread over them, ``rollout.max_concurrent_episodes``
    in flight in all."""
    address: str | None = None
    """A Ray cluster's address (``ray://HOST:10001`` or ``auto``); default ``RAY_ADDRESS``, else a local cluster."""
    max_task_retries: int = Field(2, ge=0)
    """Times a rollout whose worker died is dispatched again (a fresh actor replaces the dead one) before the
    step fails (``RolloutWorkerLost``)."""
    worker_cpus: float = Field(1.0, gt=0)
    """CPUs Ray reserves per rollout worker."""


PRIVACY_DETECTORS = ("email", "phone", "credit_card", "iban", "secrets", "high_entropy")
"""The detectors ``privacy.detectors`` may name (:mod:`agentrft.privacy.detectors` implements each)."""


class PrivacyConfig(_Section):
    """What a run writes of the text it sees (:mod:`agentrft.privacy`, docs/privacy.md). Training uses the exact
    tokens in memory; only what is written (``run.db``, exports, the served request log, the dashboard) is
    affected."""

    store: Literal["full", "redacted", "none"] = "full"
    """``full``: write trajectories as they are. ``redacted``: replace what the detectors find with
    ``[REDACTED:<kind>]`` and write no token ids (they decode back to the text). ``none``: write no trajectory
    text at all (rewards, grades' numbers, token kinds and counts, tool names and timings only)."""
    detectors: list[str] = ["email", "phone", "credit_card", "iban", "secrets"]
    """Which detectors redact (``store: redacted`` and ``none``): ``email``, ``phone``, ``credit_card``
    (Luhn-checked), ``iban`` (checksum-verified), ``secrets`` (API keys and tokens, via ``detect-secrets``),
    ``high_entropy`` (quoted base64/hex strings of high entropy; off by default: it also finds hashes)."""

    @field_validator("detectors")
    @classmethod
    def _known_detectors(cls, detectors: list[str]) -> list[str]:
        unknown = [d for d in detectors if d not in PRIVACY_DETECTORS]
        if unknown:
            raise ValueError(f"unknown detector(s) {', '.join(map(repr, unknown))}; known: "
                             f"{', '.join(PRIVACY_DETECTORS)}")
        return detectors


class MonitorsConfig(_Section):
    """Live monitors during RFT (:mod:`agentrft.train.monitors`), each step on the step's own rollouts: hacking
    probes, drift from the first steps, and an optional held-out grader. Their values are step metrics
    (``monitor/...``), each alert a ``monitor_alert`` event in the run's store; ``action: stop`` ends the run
    after the step that raised it, with that step's checkpoint written."""

    enabled: bool = False
    action: Literal["warn", "stop"] = "warn"
    """What an alert does besides being recorded: ``warn`` (log it) or ``stop`` (end the run, checkpointed)."""
    sample_size: int = Field(8, ge=1)
    """Rollouts per step (a deterministic sample) checked against the hacking probes and the held-out grader."""
    max_probe_hit_rate: float = Field(0.25, ge=0, le=1)
    """Alert when more than this fraction of the sampled rollouts scored >= 0.5 with an answer shaped like a
    hacking probe (empty, the question echoed, the reference buried in a ramble, ...)."""
    baseline_steps: int = Field(2, ge=1)
    """Steps whose means are the drift baseline (length, tool calls, refusals): the run's first ones."""
    max_drift_ratio: float = Field(3.0, gt=1)
    """Alert when a step's mean sampled length, tool calls or refusal rate exceeds baseline × this, or falls
    below baseline / this."""
    refusal_patterns: list[str] = [r"\bI can(?:no|')t\b", r"\bI(?: a|')m (?:sorry|unable)\b", r"\bI won't\b",
                                   r"\bas an AI\b"]
    """Regular expressions (case-insensitive) that make a final answer a refusal, for the refusal-rate drift."""
    heldout_grader: dict[str, Any] | str | None = None
    """An optional second grader (spec inline or a path) scored on the sampled rollouts."""
    max_disagreement: float = Field(0.3, ge=0, le=1)
    """Alert when the training and held-out graders' mean absolute reward difference exceeds this."""

    @field_validator("refusal_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"refusal pattern {pattern!r} is not a regular expression: {e}") from None
        return patterns


class PromptConfig(_Section):
    """The agent's system prompt, tool descriptions and guardrails, as ``agentrft optimize`` varies them; applied
    to every task of the job, training and evals (:func:`agentrft.tools.presentation.present_prompt`). Unset
    fields leave the tasks' own. A served model gets the client's messages as sent: send the same system
    prompt from your client."""

    system: str | None = None
    """A system prompt for every task."""
    system_mode: Literal["replace", "prepend"] = "replace"
    """``replace`` the tasks' system message with ``system``, or ``prepend`` it to theirs."""
    tool_descriptions: dict[str, str] = {}
    """Tool name -> description, replacing the description the model sees in its tool schemas."""
    guardrails: dict[str, Any] | None = None
    """Allow-lists, per-tool caps and argument constraints checked before each tool call
    (:class:`~agentrft.tools.guardrails.GuardrailConfig`'s keys; a refused call is a typed ``guardrail``
    error on the trajectory)."""
