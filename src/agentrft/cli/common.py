"""What the commands share: error exits, the rollout options, and loading a model with its chat format.

The rollout options (``--max-turns``, ``--temperature``, ``--tool-timeout-s``, ...)
are generated from the fields of :class:`~agentrft.config.RolloutConfig`, with
their docstrings as help text: a new rollout setting appears in every command
that rolls out a model without touching this package, and ``agentrft eval``
runs exactly the rollout a training run's periodic eval runs when given the
same values (:meth:`~agentrft.config.JobConfig.eval_rollout`).
"""

from __future__ import annotations

import sys
import types
from typing import Any, Callable, Union, get_args, get_origin

import click
from pydantic import ValidationError

from agentrft.config import EVAL_TEMPERATURE, RolloutConfig
from agentrft.errors import AgentRFTError

EVAL_DEFAULTS = RolloutConfig(temperature=EVAL_TEMPERATURE, seed=0)
"""The rollout an eval runs unless told otherwise: a default training run's periodic eval (greedy, seed 0)."""

MODEL_HELP = ("Bundled model name, local HF model folder, or a training run directory (RUN_DIR, or RUN_DIR@step=N "
              "for an earlier checkpoint).")


def fail(e: Exception | str) -> None:
    """One line naming the problem on stderr, exit code 2."""
    click.secho(f"error: {e}", fg="red", err=True)
    sys.exit(2)


def _click_type(annotation: Any) -> type:
    """``int``, ``float`` or ``str`` for a field annotated with one of them, optionally ``| None``."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else str
    return annotation if annotation in (int, float, str, bool) else str


def rollout_options(defaults: RolloutConfig) -> Callable:
    """Click options for every :class:`RolloutConfig` field, defaulting to ``defaults``' values."""

    def decorate(f: Callable) -> Callable:
        for name, info in reversed(list(RolloutConfig.model_fields.items())):
            default = getattr(defaults, name)
            f = click.option(f"--{name.replace('_', '-')}", name, type=_click_type(info.annotation), default=default,
                             show_default="none" if default is None else True,
                             help=(info.description or "").replace("\n", " "))(f)
        return f

    return decorate


def pop_rollout_config(options: dict[str, Any]) -> RolloutConfig:
    """Remove the rollout options from a command's keyword arguments and validate them as one config."""
    values = {name: options.pop(name) for name in RolloutConfig.model_fields}
    try:
        return RolloutConfig(**values)
    except ValidationError as e:
        err = e.errors()[0]
        option = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "rollout options"
        raise AgentRFTError(f"invalid {option}: {err['msg']}") from None


def load_model_and_format(model: str, chat_format: str):
    """``(LoadedModel, ChatFormat)`` for --model (a run directory included); ``auto`` keeps a run's own format."""
    from agentrft.jobs.trained import load_any_model
    from agentrft.models.chat_format import get_chat_format

    loaded = load_any_model(model)
    return loaded, get_chat_format(loaded.tokenizer, loaded.chat_format if chat_format == "auto" else chat_format)


def sampler_and_format(model: str, chat_format: str, **sampler_options: Any):
    """A local sampler over --model and its chat format."""
    from agentrft.rollout.hf_sampler import HFSampler

    loaded, cf = load_model_and_format(model, chat_format)
    sampler = HFSampler(loaded.model, pad_token_id=loaded.tokenizer.pad_token_id, cpu_matmul=loaded.cpu_matmul,
                        **sampler_options)
    return sampler, cf


chat_format_option = click.option("--chat-format", default="auto", show_default=True,
                                  type=click.Choice(["auto", "hermes", "template", "qwen", "llama3", "mistral"]),
                                  help="auto: the model family's format (Qwen, Llama 3, Mistral) when its special "
                                       "tokens show it, else the model's own template when it supports tools, "
                                       "else Hermes.")
