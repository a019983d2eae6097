"""One typed config for every job: the single source of truth.

A training job is one YAML file (``agentrft train CONFIG.yaml``). Each section
is a pydantic model with ``extra="forbid"``: an unknown or misspelt key is an
error naming its path, never a silent no-op. Combinations that cannot work
(DPO without pairs, GSPO with per-turn rewards, ...) are rejected at load time
with a clear message, before any model is loaded. The resolved config (all
defaults filled in) is saved with every run.

OpenAI's fine-tuning hyperparameters are accepted under ``hyperparameters``
with their OpenAI names and mapped onto ours (see :meth:`JobConfig.resolved`):
``n_epochs``, ``batch_size``, ``learning_rate_multiplier``, ``eval_interval``,
``eval_samples``, ``compute_multiplier`` (→ group size) and ``seed``.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agentrft.algo.advantages import AdvantageEstimator, Credit
from agentrft.algo.importance import ISCorrection
from agentrft.algo.losses import Aggregation, PolicyLoss
from agentrft.config_sections import (
    MonitorsConfig,
    PrivacyConfig,
    PromptConfig,
    RuntimeConfig,
    SamplerConfig,
    SinksConfig,
    WandbSinkConfig,
    _Section,
)
from agentrft.errors import ConfigError


class Method(str, Enum):
    SFT = "sft"
    DPO = "dpo"
    RFT = "rft"


EVAL_TEMPERATURE = 0.0
"""Sampling temperature of evaluations unless set: a run's periodic eval (``training.eval_temperature``) and
``agentrft eval``/``rollout`` (``--temperature``). Greedy, so two evals differ by the policy, not by the draws."""


class RolloutConfig(BaseModel):
    """Limits and sampling settings of one rollout: the one source for every path that rolls out a model.

    A training job's ``rollout`` section (RFT's sampling), a run's periodic eval (the same settings with the
    eval temperature), ``agentrft eval`` / ``agentrft rollout`` / ``agentrft grader variance`` (their options
    are generated from these fields) and the episode loop all read this class. The defaults describe sampling
    from the policy's own distribution (temperature 1, no top-p cut: what the RFT loss assumes) with room for
    a few tool calls and an answer: 6 assistant turns of at most 192 tokens each within 2,048 tokens in all.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    max_turns: int = Field(6, ge=1)
    """Assistant turns per rollout (each turn is one sampler call)."""
    max_new_tokens: int = Field(192, ge=1)
    """Sampled tokens per assistant turn."""
    max_total_tokens: int = Field(2048, ge=16)
    """Whole-rollout token budget: prompt, sampled tokens and tool output."""
    temperature: float = Field(1.0, ge=0)
    """Sampling temperature (0 = greedy)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling: draw only from the smallest set of tokens whose probability reaches this."""
    tool_timeout_s: float = Field(30.0, gt=0)
    """Deadline of each tool call, in seconds."""
    max_tool_calls: int = Field(16, ge=0)
    """Tool-call budget per rollout, counted across turns."""
    max_tool_output_chars: int = Field(4000, ge=1)
    """Longer tool results are truncated before they reach the model."""
    seed: int | None = None
    """Base seed of the sampler's draws (each turn derives its own); none: fresh randomness."""
    mode: Literal["lockstep", "per_episode"] = "lockstep"
    """How rollouts advance: ``lockstep`` (one sampler call per turn for all of them, then all their tools;
    token-reproducible at any temperature) or ``per_episode`` (each samples its next turn as soon as its own
    tools return, ready turns share a call: faster with slow tools; at temperature > 0 with a local sampler a
    rerun is not token-identical). See docs/scale.md."""
    max_concurrent_episodes: int = Field(64, ge=1)
    """``per_episode``: rollouts in flight at once."""


class DataConfig(_Section):
    env: str | None = None
    """Built-in environment (``finance``, ``support``, ``coding``, ``toy``, or ``package.module:function``)
    providing tasks, per-rollout tools and the default grader. Unset: with ``train_file``/``eval_file``
    the rows run with their own ``tools`` only (plus ``tools`` servers) and no prompt or tool of ours,
    and a ``grader`` is required; without files, the ``finance`` sample tasks."""
    train_split: str = "train"
    eval_split: str = "validation"
    train_file: str | None = None
    """JSONL training file in OpenAI's format for the method: RFT tasks (``rft``), supervised rows with
    the assistant targets (``sft``, when ``demonstrations``/``demonstrations_file`` are unset), preference
    rows (``dpo``, when no other pair source is set)."""
    eval_file: str | None = None
    """JSONL validation tasks (OpenAI RFT format) used instead of ``eval_split``."""
    demonstrations: str | None = None
    """SFT/DPO: name of the environment's oracle policy that writes demonstrations (e.g. ``verbose``)."""
    rejected_demonstrations: str | None = None
    """DPO: oracle policy whose conversations are the rejected side of each pair."""
    demonstrations_file: str | None = None
    """SFT: JSONL in OpenAI's supervised format (``messages`` with the assistant turns to imitate,
    ``tool_calls`` included; optional ``tools``, ``parallel_tool_calls``, per-message ``weight``)."""
    pairs_file: str | None = None
    """DPO: JSONL in OpenAI's preference format (``input``, ``preferred_output``,
    ``non_preferred_output``), or ``{"prompt": [...], "chosen": [...], "rejected": [...]}`` message lists."""
    pairs_from_run: str | None = None
    """DPO: a run directory (an RFT run's) whose sampled groups give the pairs: at each step, the best vs
    the worst rollout of each task, on the exact tokens that were sampled (same ``model`` needed)."""
    pairs_min_margin: float = Field(0.1, ge=0.0)
    """``pairs_from_run``: a group gives a pair only when its best and worst rewards differ by this much."""
    limit_train: int | None = None
    limit_eval: int | None = None
    skip_invalid_rows: bool = False
    """A task or demonstrations file with invalid rows (bad JSON, wrong roles, bad tool schemas, rows over
    8 MiB) stops the job before anything loads, listing every one as ``file:line: reason``. ``true`` trains
    on the valid rows instead; each skipped row is then logged and recorded in run.db (an ``invalid_rows``
    event per file)."""


    def env_name(self) -> str | None:
        """The built-in environment the job runs in; ``None``: the rows of the files, with their own tools."""
        return self.env or (None if (self.train_file or self.eval_file) else "finance")

    def demonstrations_source(self) -> str | None:
        """SFT's supervised-format file: ``demonstrations_file``, else ``train_file`` when no oracle writes them."""
        return self.demonstrations_file or (None if self.demonstrations else self.train_file)

    def pairs_source(self) -> str | None:
        """DPO's preference-format file: ``pairs_file``, else ``train_file`` when no other source is set."""
        if self.pairs_file or self.pairs_from_run or self.rejected_demonstrations:
            return self.pairs_file
        return self.train_file


class LoraConfig(_Section):
    enabled: bool = True
    r: int = Field(16, ge=1)
    alpha: float = 32.0
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    top_layers: int | None = Field(None, ge=1)
    """Adapt only the last N decoder layers (default: all). Backpropagation then stops at the lowest
    adapted layer, so a CPU step costs about (1 + 2 N / L) / 3 of a full one for an L-layer model."""
    train_top_layers: int | None = Field(None, ge=1)
    """Keep adapters on every adapted layer but train only those of the last N decoder layers; the others
    keep the values they start with (``init_from``: e.g. RFT on top of an SFT adapter) and backpropagation
    stops below the lowest trained layer, at the same (1 + 2 N / L) / 3 cost."""


class OptimConfig(_Section):
    learning_rate: float = Field(1e-4, gt=0)
    """Base learning rate; OpenAI's ``learning_rate_multiplier`` scales it."""
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = Field(1.0, gt=0)
    grad_accum_steps: int = Field(1, ge=1)
    warmup_steps: int = Field(0, ge=0)
    micro_batch_size: int = Field(8, ge=1)
    """Sequences per forward/backward pass (memory bound); gradients accumulate over a step."""
    shared_prefix_min_tokens: int = Field(16, ge=0)
    """Forward the tokens all sequences of a step start with (system prompt, tool schemas), and those the
    rollouts of one task share, once per step when they are at least this many; 0 turns it off. Same
    gradients (tested), less compute."""
    fused: bool = True
    """AdamW's fused kernel: one pass per parameter instead of foreach's temporaries (measured on 135M fp32
    params, CPU: 0.15 s vs 0.8-2.2 s per step and 0.5 GB less peak memory); ``false`` for the foreach one."""


class RFTConfig(_Section):
    group_size: int = Field(4, ge=2)
    """Rollouts per task (the group advantages are computed over)."""
    advantage: AdvantageEstimator = AdvantageEstimator.GRPO
    loss: PolicyLoss = PolicyLoss.PPO_CLIP
    aggregation: Aggregation | None = None
    """How per-token losses are averaged; default: the loss's own (DAPO token_mean, else seq_mean_token_mean).
    ``seq_mean_token_sum_norm`` is Dr.GRPO's constant normaliser (``rollout.max_total_tokens``)."""
    clip_eps_low: float = Field(0.2, gt=0)
    clip_eps_high: float = Field(0.28, gt=0)
    beta: float = Field(0.0, ge=0)
    """KL-to-reference weight (k3 estimator); 0 disables the reference model."""
    updates_per_batch: int = Field(1, ge=1)
    """Optimizer passes over each sampled batch (old logprobs fixed at sampling time)."""
    filter_zero_variance: bool = True
    """Drop groups whose rewards are all equal (no learning signal); counted in metrics."""
    resample_rounds: int = Field(0, ge=0)
    """Dynamic sampling (DAPO): after a step's groups are graded, draw up to this many more rounds of
    tasks to replace the groups whose rewards are all equal, so the update trains on ``batch_size``
    groups with a signal where the task set has them. Each round's tasks and seeds are a pure function of
    (seed, step, round), so resume stays exact; ``resampled_tasks`` counts the extra tasks per step."""
    credit: Credit = Credit.TRAJECTORY
    """``trajectory``: the reward's advantage reaches every sampled token of every turn. ``per_turn``: each
    assistant turn gets the advantage of its discounted return, with the graders' per-turn rewards
    (``Grade.turn_rewards``) where they provide them (see :func:`agentrft.algo.turn_advantages`)."""
    gamma: float = Field(1.0, ge=0, le=1)
    """Discount per assistant turn for ``credit: per_turn``."""

    asynchronous: bool = False
    """Off-policy RFT: rollouts of policy version k are collected while version k+1 trains
    (:mod:`agentrft.train.async_rft`); needs a remote sampler (``sampler.backend: openai_compat|vllm``),
    which keeps sampling with the adapter it has while the trainer updates. Off: each step samples, then trains."""
    max_staleness: int = Field(1, ge=0)
    """Asynchronous RFT: a rollout sampled by policy version v is trained on at version k only if k - v <= this
    (older ones are dropped and counted); 0 is on-policy with rollouts still overlapping grading."""
    is_correction: ISCorrection | Literal["off"] | None = None
    """Truncated importance-sampling weights on the loss for the sampler/trainer mismatch
    (:mod:`agentrft.algo.importance`), with the trainer's own logprobs as the PPO ratio's behaviour policy;
    default (unset): ``token_truncate`` when another engine samples (a remote sampler, asynchronous or not),
    none with the local sampler (the trainer's own model). ``off``: no weights, the ratio against the sampler's
    logprobs."""
    is_cap: float = Field(2.0, gt=0)
    """The weights' cap (TRL's ``vllm_importance_sampling_cap``, verl's ``rollout_is_threshold``)."""


class DPOConfig(_Section):
    beta: float = Field(0.1, gt=0)


class Hyperparameters(_Section):
    """OpenAI fine-tuning names; ``None`` keeps agentrft's value."""

    n_epochs: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    learning_rate_multiplier: float | None = Field(None, gt=0)
    eval_interval: int | None = Field(None, ge=1)
    eval_samples: int | None = Field(None, ge=1)
    compute_multiplier: float | None = Field(None, gt=0, le=1000)  # bounded: group_size * it must be an int
    seed: int | None = None
    reasoning_effort: str | None = None  # accepted for compatibility; has no effect on local models


class TrainingConfig(_Section):
    max_steps: int | None = Field(None, ge=1)
    """Optimizer steps; default: one pass over the training tasks × ``n_epochs``."""
    n_epochs: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1)
    """Tasks per step (RFT samples ``group_size`` rollouts of each)."""
    eval_interval: int = Field(5, ge=1)
    eval_samples: int = Field(32, ge=0)
    """Validation tasks evaluated at each eval; 0 turns validation evals off (checkpoints are then kept by
    recency only), e.g. when the caller evaluates on its own held-out set right after training."""
    early_stop_patience: int | None = Field(None, ge=1)
    """Stop when validation reward has not improved by ``early_stop_min_delta`` for this many evals."""
    early_stop_min_delta: float = 0.0
    eval_temperature: float = Field(EVAL_TEMPERATURE, ge=0)
    """Sampling temperature of the periodic evals (0 = greedy, lower-variance figures); the other settings are
    ``rollout``'s (see :meth:`JobConfig.eval_rollout`)."""
    keep_best_k: int = Field(2, ge=1)
    checkpoint_interval: int = Field(5, ge=1)
    max_grader_error_rate: float = Field(0.5, ge=0, le=1)
    """RFT stops with a clear message when a step's share of grades with grader faults exceeds this
    (every OpenAI error flag except ``sample_parse_error``, which marks the model's output, not the grader)."""
    max_bad_steps: int = Field(3, ge=1)
    """Non-finite loss/gradient steps in a row before the run stops (last checkpoint intact)."""
    stop_after_no_signal_steps: int | None = Field(None, ge=1)
    """Stop the run after this many steps in a row without a learning signal (RFT: no group whose rewards
    differ; DPO: every pair's chosen and rejected tokens identical; SFT: no trainable token; any method: a
    gradient of exactly zero). Unset: such steps are only warned about and counted (``no_signal``)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """auto = float32 on CPU (bf16 is ~100× slower on CPUs), bfloat16 on GPU."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cpu_matmul: Literal["auto", "onednn", "mkl"] = "auto"
    """Library for float32 linear layers on CPU (training, sampling, eval): ``auto`` takes oneDNN where it is
    faster than MKL on this machine (measured at start; 2x on AMD EPYC), ``onednn``/``mkl`` force one
    (see :mod:`agentrft.models.onednn`). No effect on GPU or in bfloat16."""


class JobConfig(_Section):
    method: Method
    model: str = "smollm2-135m"
    chat_format: Literal["auto", "hermes", "template", "qwen", "llama3", "mistral"] = "auto"
    seed: int = 0
    out_dir: str | None = None
    """Run directory; default ``runs/<method>-<timestamp>``."""
    init_from: str | None = None
    """Start from another run's best/latest weights (a run directory), e.g. RFT after SFT."""
    data: DataConfig = DataConfig()
    lora: LoraConfig = LoraConfig()
    optim: OptimConfig = OptimConfig()
    training: TrainingConfig = TrainingConfig()
    rft: RFTConfig = RFTConfig()
    dpo: DPOConfig = DPOConfig()
    rollout: RolloutConfig = RolloutConfig()
    """RFT's sampling settings (``seed`` is derived per step from the job's ``seed``; leave it unset)."""
    hyperparameters: Hyperparameters = Hyperparameters()
    grader: dict[str, Any] | str | None = None
    """Grader spec (OpenAI JSON, inline or a path); default: the environment's grader."""
    tools: dict[str, Any] | str | None = None
    """External tools (``endpoints``, ``mcp_servers``; inline or a tools.yaml path) for tasks from
    ``data.train_file``/``data.eval_file``, instead of a built-in environment's tools."""
    sinks: SinksConfig = SinksConfig()
    """Metric sinks besides ``run.db``: TensorBoard event files, an offline W&B run."""
    sampler: SamplerConfig = SamplerConfig()
    """Where rollouts (RFT's and the periodic eval's) are sampled: ``backend: local|openai_compat|vllm``; a
    remote server samples with the run's LoRA adapter, pushed to it before the first rollout and after every
    update (:mod:`agentrft.train.weight_sync`)."""
    runtime: RuntimeConfig = RuntimeConfig()
    """Where rollouts run: in-process or on Ray rollout workers (:mod:`agentrft.runtime`)."""
    privacy: PrivacyConfig = PrivacyConfig()
    """What of the trajectories' text is written to disk: full, redacted or none."""
    monitors: MonitorsConfig = MonitorsConfig()
    """Live reward-hacking and drift monitors during RFT."""
    prompt: PromptConfig = PromptConfig()
    """System prompt and tool descriptions applied to every task (what ``agentrft optimize`` writes)."""

    @model_validator(mode="after")
    def _check_combinations(self) -> "JobConfig":
        if self.training.eval_samples == 0 and self.training.early_stop_patience:
            raise ValueError("training.early_stop_patience needs validation evals; training.eval_samples is 0")
        if self.method == Method.DPO:
            sources = [name for name, on in (
                ("data.pairs_file", self.data.pairs_file), ("data.pairs_from_run", self.data.pairs_from_run),
                ("data.demonstrations + data.rejected_demonstrations",
                 self.data.demonstrations and self.data.rejected_demonstrations)) if on]
            if not sources and not self.data.train_file:
                raise ValueError("method 'dpo' needs preference pairs: data.train_file or data.pairs_file (OpenAI's "
                                 "preference format), data.pairs_from_run, or data.demonstrations and "
                                 "data.rejected_demonstrations")
            if len(sources) > 1:
                raise ValueError(f"method 'dpo' takes its pairs from one source; got {' and '.join(sources)}")
        if self.method == Method.SFT and not self.data.demonstrations and not self.data.demonstrations_source():
            raise ValueError("method 'sft' needs demonstrations: data.train_file or data.demonstrations_file "
                             "(OpenAI's supervised format), or data.demonstrations (an oracle policy name)")
        if self.rft.clip_eps_high < self.rft.clip_eps_low and self.rft.loss == PolicyLoss.DAPO:
            raise ValueError("rft.clip_eps_high must be >= rft.clip_eps_low for DAPO's clip-higher")
        if self.rft.credit is Credit.PER_TURN and self.rft.loss is PolicyLoss.GSPO:
            raise ValueError("rft.credit 'per_turn' needs a token-level loss (ppo_clip or dapo); "
                             "gspo's ratio and advantage are one per sequence")
        if self.rft.gamma != 1.0 and self.rft.credit is Credit.TRAJECTORY:
            raise ValueError("rft.gamma discounts per-turn returns; set rft.credit: per_turn to use it")
        if self.tools is not None and not (self.data.train_file and self.grader is not None):
            raise ValueError("'tools' (external tool servers) needs data.train_file and a grader spec")
        if self.tools is not None and self.data.env is not None:
            raise ValueError(f"'tools' gives the tools of your data files' rows; data.env {self.data.env!r} brings "
                             "its own tools: set one of them")
        if self.lora.train_top_layers is not None and not self.lora.enabled:
            raise ValueError("lora.train_top_layers freezes the lower layers' adapters; it needs lora.enabled: true")
        if (self.lora.train_top_layers is not None and self.lora.top_layers is not None
                and self.lora.train_top_layers > self.lora.top_layers):
            raise ValueError(f"lora.train_top_layers ({self.lora.train_top_layers}) exceeds lora.top_layers "
                             f"({self.lora.top_layers}): layers without adapters have nothing to train")
        if self.method != Method.RFT and self.rft.beta > 0:
            raise ValueError("rft.beta is an RFT setting; it has no effect with method " + self.method.value)
        if self.sampler.backend != "local" and not self.lora.enabled:
            raise ValueError(f"sampler.backend {self.sampler.backend!r} needs lora.enabled: true: the trainer pushes "
                             "its weights to the server as a LoRA adapter (POST /v1/load_lora_adapter); pushing full "
                             "weights is not implemented (agentrft serve cannot swap its base model, and vLLM needs "
                             "its in-process weight-update path for that). Train with LoRA, or sample locally "
                             "(sampler.backend: local)")
        if self.sampler.backend != "local" and self.method != Method.RFT and self.training.eval_samples == 0:
            raise ValueError(f"sampler.backend {self.sampler.backend!r}: method {self.method.value!r} samples only for "
                             "its periodic eval, and training.eval_samples is 0, so nothing would sample from the "
                             "server; use sampler.backend: local")
        if self.rft.asynchronous and self.method != Method.RFT:
            raise ValueError(f"rft.asynchronous is an RFT setting; method {self.method.value!r} has no rollouts to overlap")
        if self.rft.asynchronous and self.sampler.backend == "local":
            raise ValueError("rft.asynchronous needs a remote sampler (sampler.backend: openai_compat or vllm): the "
                             "local sampler is the trainer's own model, which cannot sample version k while "
                             "version k+1 trains")
        if self.runtime.backend == "ray" and self.method != Method.RFT:
            raise ValueError(f"runtime.backend 'ray' runs RFT's rollouts on Ray workers; method "
                             f"{self.method.value!r} has none (use runtime.backend: local)")
        if self.runtime.backend == "ray" and self.rft.asynchronous:
            raise ValueError("runtime.backend 'ray' runs a step's rollouts synchronously on the workers; "
                             "rft.asynchronous prefetches them in the trainer's process: use one or the other")
        if self.monitors.enabled and self.method != Method.RFT:
            raise ValueError(f"monitors watch RFT's live rollouts; method {self.method.value!r} has none")
        if self.rollout.seed is not None:
            raise ValueError("rollout.seed: a job derives its sampling seeds from the top-level 'seed' (per step, "
                             "and for its evals); set that instead")
        return self

    def step_rollout(self, step: int) -> RolloutConfig:
        """RFT's rollout settings at ``step``: ``rollout`` with a seed that is a pure function of (seed, step),
        so a resumed run samples what the uninterrupted one would have."""
        return self.rollout.model_copy(update={"seed": self.seed * 100_003 + step})

    def eval_rollout(self) -> RolloutConfig:
        """The periodic eval's rollout settings: ``rollout`` at ``training.eval_temperature``, no top-p cut,
        seeded by the job's ``seed``. ``agentrft eval`` with the same values rolls out the same trajectories."""
        return self.rollout.model_copy(update={"temperature": self.training.eval_temperature, "top_p": 1.0,
                                               "seed": self.seed})

    def resolved(self) -> "JobConfig":
        """Apply OpenAI-style ``hyperparameters`` onto the native sections; returns a new config."""
        c = self.model_copy(deep=True)
        h = c.hyperparameters
        if h.n_epochs is not None:
            c.training.n_epochs = h.n_epochs
        if h.batch_size is not None:
            c.training.batch_size = h.batch_size
        if h.learning_rate_multiplier is not None:
            c.optim.learning_rate = c.optim.learning_rate * h.learning_rate_multiplier
        if h.eval_interval is not None:
            c.training.eval_interval = h.eval_interval
        if h.eval_samples is not None:
            c.training.eval_samples = h.eval_samples
        if h.compute_multiplier is not None:
            # OpenAI's compute_multiplier scales exploration: more samples per task.
            c.rft.group_size = max(2, round(c.rft.group_size * h.compute_multiplier))
        if h.seed is not None:
            c.seed = h.seed
        c.hyperparameters = Hyperparameters()
        return c


def _format_validation_error(e: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for err in e.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {path}: {msg}")
    return "\n".join(lines)


MOVED_KEYS = {"rollout.eval_temperature": "training.eval_temperature"}
"""Keys that moved: a config that uses the old path gets an error naming the new one."""


def migrate_stored(raw: dict[str, Any]) -> dict[str, Any]:
    """A resolved config saved by an earlier version (``run.db``), with moved keys at their new paths."""
    raw = json.loads(json.dumps(raw))
    for old, new in MOVED_KEYS.items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        section = raw.get(old_section)
        if isinstance(section, dict) and old_key in section:
            raw.setdefault(new_section, {}).setdefault(new_key, section.pop(old_key))
    return raw


def load_config(source: str | Path | dict[str, Any], overrides: dict[str, Any] | None = None) -> JobConfig:
    """Load and validate a job config from a YAML path or a dict; raise ConfigError with key paths."""
    name = "<dict>"
    if isinstance(source, (str, Path)):
        name = str(source)
        try:
            raw = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {source}") from None
        except IsADirectoryError:
            raise ConfigError(f"config {source} is a directory; give the YAML file") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"config {source} is not UTF-8 text (byte {e.start}: {e.reason})") from None
        except OSError as e:
            raise ConfigError(f"cannot read config {source}: {e.strerror or e}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config {source} is not valid YAML: {_one_line(e)}") from None
        except (ValueError, RecursionError) as e:  # an int past 4300 digits, a bad date, nesting past the limit
            raise ConfigError(f"config {source} is not valid YAML: {_one_line(e)}") from None
    else:
        raw = dict(source)
    if not isinstance(raw, dict):
        raise ConfigError(f"config {name} must be a mapping at the top level, got {type(raw).__name__}")
    for key, value in (overrides or {}).items():
        _set_path(raw, key, value)
    for old, new in MOVED_KEYS.items():
        section, key = old.split(".")
        if isinstance(raw.get(section), dict) and key in raw[section]:
            raise ConfigError(f"invalid config {name}: {old}: this key is now {new}")
    try:
        return JobConfig.model_validate(raw).resolved()
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, name)) from None


def read_yaml_mapping(source: str | Path | dict[str, Any], kind: str) -> tuple[dict[str, Any], str, Path]:
    """A YAML file (or a mapping given inline) that must be a mapping at the top level, for the configs beside the
    job config (``kind``: "optimize config", "gate spec"). Returns ``(raw, name, folder)``: ``folder`` is the
    file's, against which relative paths in it resolve (the cwd for a mapping). Errors are ConfigErrors."""
    name, folder = "<dict>", Path.cwd()
    if isinstance(source, (str, Path)):
        name, folder = str(source), Path(source).resolve().parent
        try:
            raw = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"cannot read {kind} {source}: {e.strerror or e}") from None
        except (yaml.YAMLError, ValueError, RecursionError) as e:
            raise ConfigError(f"{kind} {source} is not valid YAML: {_one_line(e)}") from None
    else:
        raw = dict(source)
    if not isinstance(raw, dict):
        raise ConfigError(f"{kind} {name} must be a mapping at the top level")
    return raw, name, folder


def _set_path(d: dict, dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in nested mappings, creating sections; a key that runs through a value is an error."""
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"--set {dotted}: not a key path (sections and keys joined by dots, e.g. training.max_steps)")
    for depth, k in enumerate(keys[:-1]):
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            where = ".".join(keys[: depth + 1])
            raise ConfigError(f"--set {dotted}: {where} is a value ({type(d).__name__}), not a section with keys")
    d[keys[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """``KEY=VALUE`` from the command line: the value parsed as YAML (``3``, ``true``, ``[a, b]``, ``text``)."""
    if "=" not in item:
        raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
    key, text = item.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError) as e:  # ValueError: an int past 4300 digits, a bad date
        raise ConfigError(f"--set {item}: the value is not valid YAML ({_one_line(e)})") from None


def _one_line(e: Exception) -> str:
    """A YAML error as one line: the problem and where."""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem
