"""``agentrft lineage RUN_DIR`` and ``agentrft audit verify``: where a model came from, and whether the record
of it still holds.

``lineage`` prints the chain of runs (the run, its ``init_from`` parent, recursively) with their hashes and
figures, the audit-log entries about them and the log's head hash, and writes the model card
(:mod:`agentrft.governance.lineage`). A tampered audit log exits 1, naming each problem, and writes no card.
``audit verify`` checks the whole log's hash chain (:mod:`agentrft.jobs.audit`), optionally against a head
hash anchored earlier.
"""

from __future__ import annotations

import sys

import click

from agentrft.cli.common import fail


@click.command("lineage")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--card", "card_path", type=click.Path(dir_okay=False), default=None,
              help="Where to write the model card (default RUN_DIR/MODEL_CARD.md).")
@click.option("--audit-log", type=click.Path(dir_okay=False), default=None,
              help="The audit log to read (default $AGENTRFT_HOME/audit.jsonl, ~/.agentrft without it).")
def lineage_cmd(run_dir: str, card_path: str | None, audit_log: str | None) -> None:
    """The chain of runs behind RUN_DIR, the audit entries about them, and its model card."""
    from agentrft.governance.lineage import build_lineage, describe_lineage, write_model_card
    from agentrft.jobs.audit import AuditLog

    try:
        lin = build_lineage(run_dir, AuditLog(audit_log))
    except FileNotFoundError as e:
        fail(e)
    for line in describe_lineage(lin):
        click.echo(line)
    if not lin.intact:
        click.secho(f"error: the audit log {lin.audit_path} was tampered with; no model card written",
                    fg="red", err=True)
        sys.exit(1)
    click.echo(f"model card: {write_model_card(lin, card_path)}")


@click.group("audit")
def audit() -> None:
    """The audit log of train, promote, rollback and serve decisions."""


@audit.command("verify")
@click.option("--audit-log", type=click.Path(dir_okay=False), default=None,
              help="The audit log to check (default $AGENTRFT_HOME/audit.jsonl, ~/.agentrft without it).")
@click.option("--expected-head", default=None,
              help="A head hash anchored earlier: it must still be in the log (catches a rewritten log).")
def audit_verify(audit_log: str | None, expected_head: str | None) -> None:
    """Check the audit log's hash chain; exit 1 naming each edited, removed, reordered or cut-off entry."""
    from agentrft.jobs.audit import AuditLog

    log = AuditLog(audit_log)
    problems = log.verify(expected_head)
    if problems:
        click.secho(f"audit log {log.path}: TAMPERED", fg="red", err=True)
        for p in problems:
            click.echo(f"  {p}", err=True)
        sys.exit(1)
    click.echo(f"audit log {log.path}: {len(log.entries())} entries, chain intact; head {log.head() or '(empty)'}")
