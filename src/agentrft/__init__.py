"""agentrft: reinforcement fine-tuning of tool-using agents.

The stable Python API. Everything in ``__all__`` keeps its name and meaning;
the modules behind it are private to the project and may move. The names load
on first use (PEP 562), so ``import agentrft`` is cheap and pulls in neither
torch nor transformers. docs/api.md walks through a session that uses only
these names: load a model, roll it out on an environment, grade, train from a
config, serve it.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # contracts
    "Trajectory": "agentrft.types",
    "Grade": "agentrft.types",
    "ToolCall": "agentrft.types",
    "StopReason": "agentrft.types",
    "AgentRFTError": "agentrft.errors",
    "ConfigError": "agentrft.errors",
    # models
    "load_model": "agentrft.models.loading",
    "load_any_model": "agentrft.jobs.trained",
    "LoadedModel": "agentrft.jobs.trained",
    "ChatFormat": "agentrft.models.chat_format",
    "get_chat_format": "agentrft.models.chat_format",
    # environments and tools
    "Environment": "agentrft.tools.environment",
    "EnvSpec": "agentrft.tools.environment",
    "get_env": "agentrft.envs.registry",
    "tool": "agentrft.tools.schema",
    "ToolFailure": "agentrft.tools.base",
    # rollouts
    "RolloutConfig": "agentrft.config",
    "Sampler": "agentrft.rollout.sampler",
    "SamplingParams": "agentrft.rollout.sampler",
    "HFSampler": "agentrft.rollout.hf_sampler",
    "ScriptedSampler": "agentrft.rollout.sampler",
    "run_episodes": "agentrft.rollout.episode",
    # graders
    "Grader": "agentrft.graders.base",
    "load_grader": "agentrft.graders.loader",
    "grade_batch": "agentrft.graders.batch",
    # evaluation
    "evaluate_rows": "agentrft.evaluation",
    "summarize": "agentrft.evaluation",
    "paired_accuracy": "agentrft.evaluation",
    # training
    "JobConfig": "agentrft.config",
    "load_config": "agentrft.config",
    "run_job": "agentrft.train.runner",
    "RunResult": "agentrft.train.runner",
    "export_run": "agentrft.jobs.trained",
    # serving
    "ServerSettings": "agentrft.serving",
    "create_app": "agentrft.serving",
    "serve_in_background": "agentrft.serving",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
