"""Training decisions in the audit log (:mod:`agentrft.jobs.audit`).

``run_job`` records ``train_started`` once the run is set up (a resume too, with ``resume: true``), with what
identifies it (:func:`~agentrft.jobs.audit.run_lineage_fields`: config, data, grader and base-model hashes,
the parent run), and how it ended: ``train_finished`` (``completed`` or ``completed_no_signal``),
``train_stopped`` (SIGTERM/SIGINT: resumable) or ``train_failed``, with its figures and the hash of the
weights it left. The ending is read from the run store's status, which ``_train`` sets however the loop ends.

An audit write that fails (an unwritable ``$AGENTRFT_HOME``, a full disk, a broken chain) never loses a
training run: it becomes an ``audit_error`` event in the run's store and a warning line, and the run goes on.
"""

from __future__ import annotations

from typing import Any, Callable

from agentrft.jobs.audit import AuditLog, metrics_summary, run_lineage_fields
from agentrft.jobs.store import FINISHED_STATUSES
from agentrft.train.context import TrainContext

__all__ = ["record_train_ended", "record_train_started"]


def record_train_started(ctx: TrainContext, *, resume: bool, log: Callable[[str], None]) -> None:
    """Append ``train_started`` for the run of ``ctx`` (never raises)."""
    _append(ctx, "train_started", lambda: {**run_lineage_fields(ctx.run_dir, ctx.store), "resume": resume,
                                           "total_steps": ctx.total_steps}, log)


def record_train_ended(ctx: TrainContext, log: Callable[[str], None]) -> None:
    """Append how the run of ``ctx`` ended, from its store's status (never raises)."""
    def details() -> dict[str, Any]:
        run = ctx.store.get_run() or {}
        fields = run_lineage_fields(ctx.run_dir, ctx.store)
        return {"status": run.get("status"), "message": run.get("message"), "weights_hash": fields["weights_hash"],
                "config_hash": fields["config_hash"], **metrics_summary(ctx.store)}

    try:
        status = (ctx.store.get_run() or {}).get("status")
    except Exception:  # an unreadable store: the ending is still recorded, as a failure
        status = None
    action = ("train_finished" if status in FINISHED_STATUSES else
              "train_stopped" if status == "stopped" else "train_failed")
    _append(ctx, action, details, log)


def _append(ctx: TrainContext, action: str, details: Callable[[], dict[str, Any]],
            log: Callable[[str], None]) -> None:
    try:
        AuditLog().append(action, subject=str(ctx.run_dir.resolve()), details=details())
    except Exception as e:  # the audit trail must never cost a training run
        message = f"warning: could not write {action} to the audit log: {type(e).__name__}: {e}"
        log(message)
        try:
            ctx.store.log_event("audit_error", message, {"action": action})
        except Exception:  # the store may be what failed
            pass
