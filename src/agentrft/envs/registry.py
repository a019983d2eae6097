"""Registry of built-in environments, looked up by name from the CLI and configs.

Each returns an :class:`~agentrft.tools.environment.EnvSpec`: how to load its
task splits, how to make a fresh per-rollout environment from a task row, and
its default grader. Built-ins register lazily so importing agentrft does not
build corpora or databases.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from agentrft.errors import ConfigError
from agentrft.tools.environment import EnvSpec
from agentrft.types import TaskRow

__all__ = ["EnvSpec", "TaskSource", "available_envs", "get_env", "register_builtin", "task_source"]


# name -> "module:function" returning an EnvSpec; imported on first use.
_BUILTINS: dict[str, str] = {
    "finance": "agentrft.envs.finance:env_spec",
    "support": "agentrft.envs.support:env_spec",
    "coding": "agentrft.envs.coding:env_spec",
    "toy": "agentrft.envs.toy:env_spec",
}
_LOADED: dict[str, EnvSpec] = {}


def register_builtin(name: str, target: str) -> None:
    _BUILTINS[name] = target


def available_envs() -> list[str]:
    return sorted(_BUILTINS)


def get_env(name: str) -> EnvSpec:
    """A built-in environment by name, or your own as ``"package.module:function"`` returning an EnvSpec."""
    if name in _LOADED:
        return _LOADED[name]
    if name in _BUILTINS:
        target = _BUILTINS[name]
    elif ":" in name:
        target = name
    else:
        raise ConfigError(
            f"unknown environment {name!r}; available: {', '.join(available_envs())} "
            "(or give your own as 'package.module:function' returning an EnvSpec)")
    module, func = target.split(":", 1)
    try:
        factory = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot load environment {name!r} from {target!r}: {e}") from None
    spec = factory()
    if not isinstance(spec, EnvSpec):
        raise ConfigError(f"{target} returned {type(spec).__name__}, expected an EnvSpec")
    _LOADED[name] = spec
    return spec


@dataclasses.dataclass
class TaskSource:
    """The environment and task rows an eval runs on, and the rows of a task file that were left out."""

    env: EnvSpec
    rows: list[TaskRow]
    skipped: list[Any] = dataclasses.field(default_factory=list)
    """:class:`~agentrft.datasets.RowError` of each bad row of ``data`` (file, line, reason)."""


def task_source(env_name: str | None, split: str, data: str | None = None, tools: str | None = None,
                grader: str | None = None) -> TaskSource:
    """An environment's split, or your task file (``data``) with your tool servers (``tools``) and grader spec.

    With ``data`` and no ``env_name``, the rows run in the generic ``data`` environment: each row's own
    ``tools`` (schema-only ones end the episode with the calls as the output, as OpenAI's function-calling
    RFT does), the servers of ``tools`` (a tools.yaml), and nothing of ours in the prompt; ``grader`` is then
    required. ``env_name`` with ``data`` runs your rows in that built-in environment. Without ``data``,
    ``env_name`` defaults to ``finance``. ``grader`` replaces the environment's default grader.
    """
    if tools and not data:
        raise ConfigError("--tools gives the tools of your --data tasks; it needs --data")
    if tools and env_name:
        raise ConfigError(f"--tools gives the tools of your --data tasks; --env {env_name} brings its own tools: "
                          "give one of them")
    rows, skipped = None, []
    if data:
        from agentrft.datasets import load_jsonl_dataset

        loaded = load_jsonl_dataset(data)
        rows, skipped = loaded.rows, list(loaded.errors)
    grade = None
    if grader:
        from agentrft.graders import load_grader

        grade = load_grader(grader).grade  # (trajectory, row) -> Grade
    if rows is not None and env_name is None:
        from agentrft.envs.external import external_env_spec, load_tools_config

        if grade is None:
            raise ConfigError("--data without --env runs your rows with their own tools and grades them with your "
                              "grader: give --grader (an OpenAI grader spec), or --env NAME to use a built-in "
                              "environment and its grader")
        return TaskSource(external_env_spec(rows, load_tools_config(tools), grade), rows, skipped)
    env_name = env_name or "finance"
    env = get_env(env_name)
    if grade is not None:
        env = dataclasses.replace(env, grade=grade)
    if rows is None:
        if split not in env.splits:
            raise ConfigError(f"environment {env_name!r} has no split {split!r}; splits: {', '.join(env.splits)}")
        rows = env.load_split(split)
    return TaskSource(env, rows, skipped)
