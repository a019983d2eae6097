"""Registry of built-in environments, looked up by name from the CLI and configs.

An :class:`EnvSpec` bundles what a run needs to use an environment: how to
load its task splits, how to make a fresh per-rollout environment from a task
row, and its default grader. Built-ins register lazily so importing agentrft
does not build corpora or databases.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from agentrft.errors import ConfigError
from agentrft.types import Grade, TaskRow, Trajectory

if TYPE_CHECKING:  # pragma: no cover
    from agentrft.tools.environment import Environment


@dataclass
class EnvSpec:
    name: str
    description: str
    splits: tuple[str, ...]
    load_split: Callable[[str], list[TaskRow]]
    make_env: Callable[[TaskRow], "Environment"]  # a fresh instance per rollout
    grade: Callable[[Trajectory, TaskRow], Grade]  # default grader used by `agentrft eval`
    # Scripted policies: name -> function(row) -> the complete executed conversation (system, user,
    # assistant tool calls, tool results, final answer), i.e. a demonstration for SFT/DPO.
    oracles: dict[str, Callable[[TaskRow], list[dict]]] | None = None


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
