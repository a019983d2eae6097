"""An OpenAI ``POST /v1/fine_tuning/jobs`` body, checked and turned into the :class:`~agentrft.config.JobConfig`
its worker runs.

The body is OpenAI's: ``model``, ``training_file``, ``validation_file``, ``suffix``, ``seed``,
``metadata``, and ``method`` = ``{type: supervised|dpo|reinforcement, <type>: {hyperparameters, grader}}``
with OpenAI's hyperparameter names (``"auto"`` keeps agentrft's value). What OpenAI's API has no words
for goes in one extension object, ``agentrft`` (``extra_body={"agentrft": {...}}`` with the SDK):

* ``env`` — a built-in environment (``finance``, ``support``, ``coding``, ``toy``) whose tools and
  default grader the job uses;
* ``tools`` — ``{endpoints: [...], mcp_servers: [...]}``: HTTP tool endpoints (OpenAI Agent RFT wire
  format) and MCP servers that implement the rows' tools, reached under the server's egress policy;
* ``config`` — native settings by section (``training``, ``rollout``, ``rft``, ``lora``, ``optim``,
  ``dpo``, ``sinks``, ``privacy``), e.g. ``{"training": {"max_steps": 3}}``.

Everything is checked here, before the job exists: a bad body is an OpenAI-style 400 naming the field,
and a file that failed validation, or is in the wrong format for the method, refuses the job at creation.
The API's clients are not the operator: nothing a client sends is read as a local path (files by id,
models by registered name, no ``out_dir``/``init_from``/``*_file`` keys, environments by built-in name
only, graders inline only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from agentrft.config import load_config
from agentrft.envs.registry import available_envs
from agentrft.errors import ConfigError
from agentrft.serving.protocol import APIError
from agentrft.trust import SubmissionLimits, TrustError

METHODS = {"supervised": "sft", "dpo": "dpo", "reinforcement": "rft"}
FILE_FORMAT = {"supervised": "supervised", "dpo": "preference", "reinforcement": "task"}
HYPERPARAMETERS = {
    "supervised": ("batch_size", "learning_rate_multiplier", "n_epochs"),
    "dpo": ("batch_size", "learning_rate_multiplier", "n_epochs", "beta"),
    "reinforcement": ("batch_size", "learning_rate_multiplier", "n_epochs", "eval_interval", "eval_samples",
                      "compute_multiplier", "reasoning_effort"),
}
CONFIG_SECTIONS = ("training", "rollout", "rft", "lora", "optim", "dpo", "sinks", "privacy")
"""The native sections a client may set through ``agentrft.config`` (none of them holds a path)."""
TOP_LEVEL = {"model", "training_file", "validation_file", "suffix", "seed", "metadata", "method",
             "hyperparameters", "integrations", "agentrft"}
SUFFIX = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class JobPlan:
    """What the server records for a new job."""

    method: dict[str, Any]
    config: dict[str, Any]
    """The JobConfig as a dict, with ``{RUN_DIR}``/``{TRAINING_FILE}``/``{VALIDATION_FILE}`` placeholders the
    server fills with the job's own paths."""
    seed: int
    base_model: str
    warnings: list[str]


def plan_job(body: Any, *, files: dict[str, dict[str, Any]], base_models: dict[str, str],
             fine_tuned: dict[str, dict[str, Any]], limits: SubmissionLimits | None = None) -> JobPlan:
    """Check ``body`` and build the job's config.

    ``files``: the stored file rows by id; ``base_models``: registered model name -> what
    :func:`agentrft.models.loading.load_model` takes; ``fine_tuned``: ``ft:`` name -> the succeeded job row.
    """
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    unknown = sorted(set(body) - TOP_LEVEL)
    if unknown:
        raise APIError(400, f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0])
    if body.get("integrations"):
        raise APIError(400, "integrations (W&B on OpenAI's side) are not available here; switch metric sinks on "
                            "with agentrft.config.sinks", param="integrations")

    model = _required_str(body, "model")
    init_from = None
    if model in fine_tuned:
        parent = fine_tuned[model]
        base_model, init_from = parent["model"], "{PARENT_RUN_DIR}"
    elif model in base_models:
        base_model = model
    else:
        raise APIError(400, f"Model {model!r} is not available for fine-tuning here; available: "
                            f"{sorted(base_models)} and fine-tuned models of succeeded jobs",
                       param="model", code="model_not_available")

    method_type, method_body, hyper, grader = _method(body)
    training = _file(body, "training_file", files, FILE_FORMAT[method_type], required=True)
    validation = _file(body, "validation_file", files, "task", required=False)
    suffix = body.get("suffix")
    if suffix is not None and (not isinstance(suffix, str) or not SUFFIX.match(suffix)):
        raise APIError(400, "suffix must be 1-64 characters of letters, digits, '-' and '_'", param="suffix")
    seed = body.get("seed")
    if seed is None:
        seed = 0
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**31:
        raise APIError(400, "seed must be an integer in [0, 2147483647]", param="seed")
    _metadata(body.get("metadata"))
    ext = _extension(body.get("agentrft"))

    warnings: list[str] = []
    cfg: dict[str, Any] = {"method": METHODS[method_type], "model": base_models[base_model], "seed": seed,
                           "out_dir": "{RUN_DIR}", "data": {"train_file": "{TRAINING_FILE}"}}
    if init_from is not None:
        cfg["init_from"] = init_from
    if ext.get("env"):
        cfg["data"]["env"] = ext["env"]
    if ext.get("tools"):
        cfg["tools"] = ext["tools"]
    if grader is not None:
        cfg["grader"] = grader
    for section, values in (ext.get("config") or {}).items():
        cfg[section] = values
    hp = {k: v for k, v in hyper.items() if v != "auto" and k != "beta"}
    if method_type == "dpo" and hyper.get("beta", "auto") != "auto":
        cfg.setdefault("dpo", {})["beta"] = hyper["beta"]
    if hp:
        cfg["hyperparameters"] = hp
    if validation is not None:
        if method_type == "reinforcement" or grader is not None or ext.get("env"):
            cfg["data"]["eval_file"] = "{VALIDATION_FILE}"
        else:
            warnings.append("validation_file is stored but not evaluated: agentrft evaluates by rolling out and "
                            "grading its tasks; give method.<type>.grader or agentrft.env to evaluate it")
    if "eval_file" not in cfg["data"] and not ext.get("env"):
        cfg.setdefault("training", {}).setdefault("eval_samples", 0)
    try:
        job_config = load_config(_filled(cfg))
    except ConfigError as e:
        raise APIError(400, f"this job cannot run: {e}", param="method") from None
    limits = limits or SubmissionLimits()
    try:
        limits.check_n(job_config.rft.group_size)
        limits.check_max_tokens(job_config.rollout.max_new_tokens)
    except TrustError as e:
        raise APIError(400, f"this job asks for more than this server allows: {e}", param="method") from None
    return JobPlan(method={"type": method_type, method_type: method_body}, config=cfg, seed=seed,
                   base_model=base_model, warnings=warnings)


def fine_tuned_name(base_model: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's naming: ``ft:<base>:<suffix>:<job-id>`` (empty suffix when none was given)."""
    return f"ft:{base_model}:{suffix or ''}:{job_id}"


def checkpoint_name(fine_tuned_model: str, step: int) -> str:
    return f"{fine_tuned_model}:ckpt-step-{step}"


def _filled(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with placeholder paths that validate (the config check runs before the job has paths)."""
    import json

    text = json.dumps(cfg)
    for name in ("RUN_DIR", "TRAINING_FILE", "VALIDATION_FILE", "PARENT_RUN_DIR"):
        text = text.replace("{" + name + "}", f"/nonexistent/{name.lower()}")
    return json.loads(text)


def _required_str(body: dict, key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise APIError(400, f"Missing required parameter: '{key}'" if value is None else f"{key} must be a string",
                       param=key, code="missing_required_parameter" if value is None else None)
    return value


def _method(body: dict) -> tuple[str, dict, dict, dict | None]:
    method = body.get("method")
    legacy = body.get("hyperparameters")
    if method is None:  # OpenAI's older shape: supervised, hyperparameters at the top level
        method = {"type": "supervised", "supervised": {"hyperparameters": legacy or {}}}
    elif legacy:
        raise APIError(400, "give hyperparameters inside method.<type>, not at the top level", param="hyperparameters")
    if not isinstance(method, dict) or method.get("type") not in METHODS:
        raise APIError(400, f"method.type must be one of {list(METHODS)}", param="method.type")
    kind = method["type"]
    extra = sorted(set(method) - {"type", kind})
    if extra:
        raise APIError(400, f"method.{extra[0]} does not belong to a {kind} job", param=f"method.{extra[0]}")
    inner = method.get(kind) or {}
    if not isinstance(inner, dict):
        raise APIError(400, f"method.{kind} must be an object", param=f"method.{kind}")
    allowed = {"hyperparameters", "grader"} if kind == "reinforcement" else {"hyperparameters"}
    extra = sorted(set(inner) - allowed)
    if extra:
        raise APIError(400, f"method.{kind}.{extra[0]} is not a {kind} setting", param=f"method.{kind}.{extra[0]}")
    hyper = inner.get("hyperparameters") or {}
    if not isinstance(hyper, dict):
        raise APIError(400, f"method.{kind}.hyperparameters must be an object", param=f"method.{kind}.hyperparameters")
    unknown = sorted(set(hyper) - set(HYPERPARAMETERS[kind]))
    if unknown:
        raise APIError(400, f"method.{kind}.hyperparameters.{unknown[0]} is not a {kind} hyperparameter (these are: "
                            f"{', '.join(HYPERPARAMETERS[kind])})", param=f"method.{kind}.hyperparameters.{unknown[0]}")
    if hyper.get("reasoning_effort") not in (None, "default"):
        raise APIError(400, "reasoning_effort selects how long OpenAI's reasoning models think; the models trained "
                            "here have no such setting: leave it out",
                       param=f"method.{kind}.hyperparameters.reasoning_effort")
    hyper = {k: v for k, v in hyper.items() if k != "reasoning_effort"}
    grader = inner.get("grader")
    if kind == "reinforcement":
        if not isinstance(grader, dict):
            raise APIError(400, "a reinforcement job needs method.reinforcement.grader (an OpenAI grader object)",
                           param="method.reinforcement.grader")
        from agentrft.graders.spec import parse_spec

        _refuse_env_references(grader, "method.reinforcement.grader")
        try:
            parse_spec(grader)
        except (ConfigError, ValueError) as e:
            raise APIError(400, f"invalid grader: {e}", param="method.reinforcement.grader") from None
    return kind, inner, hyper, grader


def _file(body: dict, key: str, files: dict[str, dict], fmt: str, *, required: bool) -> dict | None:
    file_id = body.get(key)
    if file_id is None:
        if required:
            raise APIError(400, f"Missing required parameter: '{key}'", param=key, code="missing_required_parameter")
        return None
    if not isinstance(file_id, str) or file_id not in files:
        raise APIError(400, f"invalid {key}: no file {file_id!r} (upload it with POST /v1/files)", param=key,
                       code="invalid_file")
    row = files[file_id]
    if row["status"] != "processed":
        raise APIError(400, f"{key} {file_id} failed validation: {row['status_details']}", param=key,
                       code="invalid_file")
    if fmt not in row["formats"]:
        raise APIError(400, f"{key} {file_id} is not in the {fmt} format this job needs (its rows are "
                            f"{' / '.join(row['formats'])} rows)", param=key, code="invalid_file_format")
    return row


def _metadata(metadata: Any) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict) or len(metadata) > 16:
        raise APIError(400, "metadata must be an object of at most 16 keys", param="metadata")
    for k, v in metadata.items():
        if not isinstance(v, str) or len(k) > 64 or len(v) > 512:
            raise APIError(400, "metadata keys are at most 64 characters and values strings of at most 512",
                           param=f"metadata.{k}")


def _extension(ext: Any) -> dict[str, Any]:
    if ext is None:
        return {}
    if not isinstance(ext, dict):
        raise APIError(400, "agentrft must be an object", param="agentrft")
    extra = sorted(set(ext) - {"env", "tools", "config"})
    if extra:
        raise APIError(400, f"agentrft.{extra[0]} is not a setting (env, tools, config)", param=f"agentrft.{extra[0]}")
    env = ext.get("env")
    if env is not None and env not in available_envs():
        raise APIError(400, f"agentrft.env must be a built-in environment: {available_envs()}", param="agentrft.env")
    tools = ext.get("tools")
    if tools is not None and not isinstance(tools, dict):
        raise APIError(400, "agentrft.tools must be an object with endpoints and/or mcp_servers (inline, not a path)",
                       param="agentrft.tools")
    if tools is not None:
        _refuse_env_references(tools, "agentrft.tools")
    config = ext.get("config") or {}
    if not isinstance(config, dict):
        raise APIError(400, "agentrft.config must be an object of sections", param="agentrft.config")
    for section, values in config.items():
        if section not in CONFIG_SECTIONS:
            raise APIError(400, f"agentrft.config.{section} cannot be set through the API (sections: "
                                f"{', '.join(CONFIG_SECTIONS)})", param=f"agentrft.config.{section}")
        if not isinstance(values, dict):
            raise APIError(400, f"agentrft.config.{section} must be an object", param=f"agentrft.config.{section}")
    wandb = (config.get("sinks") or {}).get("wandb")
    if isinstance(wandb, dict) and "dir" in wandb:
        raise APIError(400, "agentrft.config.sinks.wandb.dir is a server path: W&B files of an API job go in its "
                            "run directory", param="agentrft.config.sinks.wandb.dir")
    return ext


def _refuse_env_references(value: Any, where: str) -> None:
    """Refuse ``${VAR}`` anywhere in a submitted grader or tools object: agentrft expands it from its own
    environment (headers, MCP env), which would hand the server's secrets to a URL the client chose."""
    if isinstance(value, str):
        if "${" in value:
            raise APIError(400, f"{where} contains '${{': environment references are expanded on the server, so "
                                "the API refuses them; put the value itself in the request", param=where)
    elif isinstance(value, dict):
        for k, v in value.items():
            _refuse_env_references(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _refuse_env_references(v, f"{where}.{i}")
