"""``agentrft optimize CONFIG``: measure prompt, tool and guardrail variants before training.

Parses the command line, loads the model named by the config's job and calls
:func:`agentrft.governance.run_optimize`; prints the table and the verdict.
"""

from __future__ import annotations

from pathlib import Path

import click

from agentrft.cli.common import fail, sampler_and_format
from agentrft.errors import AgentRFTError


@click.command("optimize")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Writes optimize.json, report.md, best.yaml and one eval folder per variant here.")
@click.option("--limit", type=int, default=None, help="Measure on the first N tasks (overrides the config's limit).")
def optimize_cmd(config: str, out: str, limit: int | None) -> None:
    """Evaluate variants of the system prompt, tool descriptions, tool output and guardrails on the validation
    tasks; pick the best with paired statistics; write it as a training config; say whether what still fails
    needs prompting or weights."""
    from agentrft.governance import load_optimize_config, run_optimize
    from agentrft.governance.report import markdown_report

    try:
        cfg, job, job_raw = load_optimize_config(config)
        if limit is not None:
            if limit < 1:
                raise AgentRFTError("--limit must be at least 1")
            cfg = cfg.model_copy(update={"limit": limit})
        sampler, cf = sampler_and_format(job.model, job.chat_format)
        report = run_optimize(cfg, job, job_raw, sampler, cf, out, log=lambda m: click.echo(m, err=True))
    except AgentRFTError as e:
        fail(e)
    click.echo(markdown_report(report))
    click.echo(f"wrote {Path(out) / 'optimize.json'}, {Path(out) / 'report.md'} and {Path(out) / 'best.yaml'}")
