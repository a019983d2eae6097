"""The ``agentrft`` command line.

Thin on purpose: each command parses options, builds the typed pieces and
calls library functions (:mod:`agentrft.evaluation`, the trainers, the grader
tools), so everything the CLI does is also a Python API (:mod:`agentrft`).
The commands live next to what they do: :mod:`~agentrft.cli.measure` (models,
envs, tasks, eval, rollout), :mod:`~agentrft.cli.train` (train, quickstart),
:mod:`~agentrft.cli.serve` (export, serve), :mod:`~agentrft.cli.grader` (the
``grader`` group) and :mod:`~agentrft.cli.info`; shared options, including the
rollout options generated from :class:`~agentrft.config.RolloutConfig`, are in
:mod:`~agentrft.cli.common`.
"""

from __future__ import annotations

import click

from agentrft.cli.dashboard import dashboard_cmd
from agentrft.cli.grader import grader
from agentrft.cli.info import info_cmd
from agentrft.cli.lineage import audit, lineage_cmd
from agentrft.cli.optimize import optimize_cmd
from agentrft.cli.promote import promote_cmd, registry, rollback_cmd
from agentrft.cli.measure import envs_cmd, eval_cmd, models_cmd, rollout_cmd, tasks_cmd
from agentrft.cli.runs import runs
from agentrft.cli.serve import export_cmd, serve_cmd
from agentrft.cli.server import server_cmd, server_key
from agentrft.cli.train import quickstart_cmd, train_cmd

__all__ = ["entry", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """agentrft: reinforcement fine-tuning of tool-using agents."""


for command in (models_cmd, info_cmd, envs_cmd, tasks_cmd, eval_cmd, rollout_cmd, train_cmd, quickstart_cmd,
                optimize_cmd, export_cmd, serve_cmd, server_cmd, server_key, dashboard_cmd, grader, runs,
                lineage_cmd, audit, promote_cmd, rollback_cmd, registry):
    main.add_command(command)


def entry() -> None:
    """The ``agentrft`` console script: the process's allocator first (:mod:`agentrft.allocator`), then the commands."""
    from agentrft.allocator import ensure_preferred

    ensure_preferred()
    main()
