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


def task_source(env_name: str, split: str, data: str | None = None, tools: str | None = None,
                grader: str | None = None) -> TaskSource:
    """An environment's split, or your task file (``data``) with your tool servers (``tools``) and grader spec.

    ``grader`` replaces the environment's default grader; ``tools`` (a tools.yaml) needs ``data`` and
    ``grader``, and runs the file's tasks against those tool servers instead of a built-in environment.
    """
    rows, skipped = None, []
    if data:
        from agentrft.datasets import load_jsonl_dataset

        loaded = load_jsonl_dataset(data)
        rows, skipped = loaded.rows, list(loaded.errors)
    grade = None
    if grader:
        from agentrft.graders import load_grader

        grade = load_grader(grader).grade  # (trajectory, row) -> Grade
    if tools:
        from agentrft.envs.external import external_env_spec, load_tools_config

        if rows is None or grade is None:
            raise ConfigError("--tools needs --data (the tasks) and --grader (the reward)")
        return TaskSource(external_env_spec(rows, load_tools_config(tools), grade), rows, skipped)
    env = get_env(env_name)
    if grade is not None:
        env = dataclasses.replace(env, grade=grade)
    if rows is None:
        if split not in env.splits:
            raise ConfigError(f"environment {env_name!r} has no split {split!r}; splits: {', '.join(env.splits)}")
        rows = env.load_split(split)
    return TaskSource(env, rows, skipped)
