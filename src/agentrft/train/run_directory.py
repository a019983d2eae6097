"""What a start or a resume may do with a run directory that already holds a run.

**A plain start** where a run never wrote a checkpoint (it failed while preparing its data, failed, was
stopped or crashed before its first one) replaces that run: there is nothing to resume, and before this the
left-over ``run.db`` refused the re-run ("already holds a run; pass --resume") while ``--resume`` started
from step 0 anyway. Its store is kept beside as ``run.db.replaced-<time>``. A run with a checkpoint, or a
finished one, is refused: continue it with ``--resume``. A start that fails before its first step removes the
store it made (the runner's ``setup``).

**A resumed run** keeps the config it started with, unless told otherwise.

``agentrft train CONFIG --resume`` is given a config again (the YAML and any ``--set``). Before this check,
a resume without the first start's ``--set training.max_steps=3`` quietly took the YAML's 10 steps. Now the
run's saved resolved config (``run.db``, ``runs.resolved_config``) is the reference: any key whose value
differs from it is refused, listed as ``key: old -> new``; ``allow_config_change`` (``--allow-config-change``)
continues with the new values, prints them, records a ``config_change`` event and saves the new config as the
run's.

What legitimately differs is normalised first: ``out_dir`` is not compared (it is how the run was found:
unset on a start that took ``runs/<method>-<time>``, relative or absolute), paths given relative on one start
and absolute on the other (``init_from``, the data files) are compared as the places they name,
``training.cpu_matmul: auto`` stands for the library the run pinned at its start (``_pin_cpu_matmul`` in the
runner), and fields a newer agentrft added take their defaults (the saved config is validated again first).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from agentrft.config import JobConfig, migrate_stored
from agentrft.errors import ConfigError
from agentrft.jobs.checkpoint import checkpoint_steps
from agentrft.jobs.store import DB_NAME, FINISHED_STATUSES, RunStore, StoreError

PATH_KEYS = ("init_from", "data.train_file", "data.eval_file", "data.demonstrations_file", "data.pairs_file",
             "data.pairs_from_run")
"""Keys holding a path: equal when they name the same place, whichever way they are written."""
NOT_COMPARED = ("out_dir", "sinks", "sampler.url")
"""Not how the run trains: ``out_dir`` is where the run is found (unset on a start that took
``runs/<method>-<time>``, relative or absolute, it names the directory being resumed); ``sinks`` (and every
key under it) are where metrics are copied to, so a resume may switch TensorBoard or W&B on or off;
``sampler.url`` is where the inference server is found (it may have moved; the weights are pushed again)."""

_MISSING = "(unset)"


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def _normalised(raw: dict[str, Any]) -> dict[str, Any]:
    try:  # a config saved by an earlier agentrft: moved keys at their new paths, new fields at their defaults
        raw = JobConfig.model_validate(migrate_stored(raw)).model_dump(mode="json")
    except ValidationError:  # no longer valid: compared as saved; the differences say what changed
        raw = migrate_stored(raw)
    flat = _flatten(raw)
    for key in PATH_KEYS:
        if isinstance(flat.get(key), str):
            flat[key] = str(Path(flat[key]).expanduser().resolve())
    return flat


def config_changes(saved: dict[str, Any], given: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (saved value, given value)}`` for each key whose value differs, sorted by key."""
    a, b = _normalised(saved), _normalised(given)
    changes = {}
    for key in sorted(k for k in a.keys() | b.keys() if not _not_compared(k)):
        old, new = a.get(key, _MISSING), b.get(key, _MISSING)
        if key == "training.cpu_matmul" and "auto" in (old, new):
            continue  # pinned at the start; "auto" on a resume means "what the run pinned"
        if old != new:
            changes[key] = (old, new)
    return changes


def _not_compared(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in NOT_COMPARED)


def describe(changes: dict[str, tuple[Any, Any]]) -> list[str]:
    """One ``key: old -> new`` line per change."""
    return [f"  {key}: {old!r} -> {new!r}" for key, (old, new) in changes.items()]


def check_resume_config(run_dir: Path, saved: dict[str, Any], cfg: JobConfig, *, allow_change: bool,
                        written: Callable[[Any], Any] = lambda config: config) -> dict[str, tuple[Any, Any]]:
    """The differences between the run's saved config and ``cfg``; refused (:class:`ConfigError`, listing
    them) unless ``allow_change``. ``written``: the form the store saves a config in (redacted under
    ``privacy.store: redacted``), applied to both sides so a redacted value is not a difference."""
    changes = config_changes(written(saved), written(cfg.model_dump(mode="json")))
    if changes and not allow_change:
        raise ConfigError("\n".join([
            f"cannot resume {run_dir}: the config differs from the one the run started with (saved in its run.db):",
            *describe(changes),
            "Resume with the run's config (the same YAML and --set options as its first start), or pass "
            "--allow-config-change (run_job(..., allow_config_change=True)) to continue with the new values; the "
            "change is then recorded in run.db."]))
    return changes


HOLDS_A_RUN = "run directory {run_dir} already holds a run; pass --resume to continue it or choose another out_dir"


def remove_store(run_dir: Path, keep_as: Path | None = None) -> None:
    """Delete ``run.db`` with its WAL files, or with ``keep_as`` rename them to that name."""
    for suffix in ("", "-wal", "-shm"):
        part = Path(f"{run_dir / DB_NAME}{suffix}")
        if keep_as is not None and part.exists():
            part.rename(Path(f"{keep_as}{suffix}"))
        else:
            part.unlink(missing_ok=True)


def set_aside_unfinished_run(run_dir: Path, log: Callable[[str], None]) -> None:
    """A plain start where a run never wrote a checkpoint (it failed, was stopped or crashed before its first
    one: nothing to resume) replaces that run, keeping its store as ``run.db.replaced-<time>``. A run with a
    checkpoint, or a finished one, is refused: continue it with ``--resume``. Called under the run's lock, so
    no live job owns that run."""
    if checkpoint_steps(run_dir):
        raise ConfigError(HOLDS_A_RUN.format(run_dir=run_dir))
    try:
        with RunStore(run_dir) as old:
            run = old.get_run()
    except StoreError:
        run = None  # unreadable, and no checkpoint: nothing to resume either
    if run is not None and run["status"] in FINISHED_STATUSES:
        raise ConfigError(HOLDS_A_RUN.format(run_dir=run_dir))
    kept = run_dir / f"{DB_NAME}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    remove_store(run_dir, keep_as=kept)
    was = (f"status {run['status']}" + (f": {run['message']}" if run["message"] else "")) if run else "no run record"
    log(f"run directory {run_dir} held a run that never wrote a checkpoint ({was}); starting it over, its store "
        f"kept as {kept.name}")


__all__ = ["HOLDS_A_RUN", "check_resume_config", "config_changes", "describe", "remove_store",
           "set_aside_unfinished_run"]
