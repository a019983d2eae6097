"""``agentrft promote``, ``agentrft rollback`` and ``agentrft registry list | show``: the model registry.

The gate, the registry and the audit entries are library code
(:func:`agentrft.governance.promote.promote`,
:class:`agentrft.governance.registry.ModelRegistry`); these commands parse
options and print. ``promote`` exits 1 when the gate refuses the candidate and
2 on an error, so a deploy script can tell "not good enough" from "broken".
"""

from __future__ import annotations

import json
import sys
import time

import click

from agentrft.cli.common import fail
from agentrft.errors import AgentRFTError

__all__ = ["promote_cmd", "registry", "rollback_cmd"]

_HOME = click.option("--home", type=click.Path(file_okay=False), default=None,
                     help="Registry and audit log home (default: $AGENTRFT_HOME or ~/.agentrft).")


@click.command("promote")
@click.argument("run_dir")
@click.option("--as", "name", required=True, help="The alias to point at the run's weights, e.g. finance-agent.")
@click.option("--gate", "gate", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Gate spec (gate.yaml): the tasks and the thresholds the candidate must meet.")
@_HOME
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default=None,
              help="Where to run both models' evals (default: each run's training.device).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Also write gate.json and both evals' summaries and trajectories here.")
@click.option("--json", "as_json", is_flag=True, help="Print the gate report as JSON.")
def promote_cmd(run_dir: str, name: str, gate: str, home: str | None, device: str | None, out: str | None,
                as_json: bool) -> None:
    """Gate RUN_DIR's latest checkpoint (RUN_DIR@step=N: that one) against NAME's current model and promote it
    if every threshold of the gate holds; refused: exit 1, NAME unchanged."""
    from agentrft.governance.promote import promote
    from agentrft.jobs.trained import split_model_spec

    path, step = split_model_spec(run_dir)
    try:
        report = promote(path, name, gate, home=home, step=step, device=device, out_dir=out)
    except AgentRFTError as e:
        fail(e)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.format())
    if not report.passed:
        sys.exit(1)


@click.command("rollback")
@click.argument("name")
@_HOME
def rollback_cmd(name: str, home: str | None) -> None:
    """Point NAME back at the model it served before its last promotion (no eval, no copy)."""
    from agentrft.governance.registry import ModelRegistry

    try:
        left, restored = ModelRegistry(home).rollback(name)
    except AgentRFTError as e:
        fail(e)
    click.echo(f"{name}: {left.weights_sha256[:12]} -> {restored.weights_sha256[:12]} "
               f"(run {restored.run_dir} step {restored.step}, promoted {_when(restored.promoted_at)})")


@click.group("registry")
def registry() -> None:
    """The model registry: aliases and what they point at."""


@registry.command("list")
@_HOME
def list_cmd(home: str | None) -> None:
    """Every alias and its current weights."""
    from agentrft.governance.registry import ModelRegistry

    reg = ModelRegistry(home)
    try:
        names = reg.names()
        if not names:
            click.echo(f"no aliases in {reg.root}")
        for name in names:
            entry = reg.current(name)
            target = f"{entry.weights_sha256[:12]}  {entry.run_dir} step {entry.step}" if entry else "-"
            click.echo(f"{name:<24} {target}")
    except AgentRFTError as e:
        fail(e)


@registry.command("show")
@click.argument("name")
@_HOME
@click.option("--json", "as_json", is_flag=True, help="Print the alias record as JSON.")
def show_cmd(name: str, home: str | None, as_json: bool) -> None:
    """NAME's promotions, oldest first; ``*`` marks the current one."""
    from agentrft.governance.registry import ModelRegistry

    try:
        record = ModelRegistry(home).record(name)
    except AgentRFTError as e:
        fail(e)
    if record is None:
        fail(f"no alias {name!r}")
    if as_json:
        click.echo(json.dumps(record.to_dict(), indent=2))
        return
    for e in record.entries:
        mark = "*" if e.index == record.current else " "
        checks = e.gate.get("checks") or []
        gate = ", ".join(f"{c['name']} {c['value']:.3g}" for c in checks) or "no gate"
        click.echo(f"{mark} {e.index:>3}  {e.weights_sha256[:12]}  {_when(e.promoted_at)}  {e.promoted_by}  "
                   f"{e.run_dir} step {e.step}  [{gate}]")


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
