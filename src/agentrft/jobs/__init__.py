"""Run bookkeeping: the run directory's SQLite store, its crash-safe checkpoints, and trained runs as models.

See docs/runs.md for the layout and the checkpoint protocol, and docs/serving.md
for loading, exporting and serving a run (:mod:`agentrft.jobs.trained`). Names are
imported lazily so that readers of the store (dashboard, job API) do not pay
for importing torch, which only the checkpoint module needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AuditLog": "agentrft.jobs.audit",
    "AuditTampered": "agentrft.jobs.audit",
    "CheckpointError": "agentrft.jobs.checkpoint",
    "CheckpointInfo": "agentrft.jobs.checkpoint",
    "load_checkpoint": "agentrft.jobs.checkpoint",
    "load_latest_checkpoint": "agentrft.jobs.checkpoint",
    "params_hash": "agentrft.jobs.checkpoint",
    "restore_checkpoint": "agentrft.jobs.checkpoint",
    "save_checkpoint": "agentrft.jobs.checkpoint",
    "RunStore": "agentrft.jobs.store",
    "StoreError": "agentrft.jobs.store",
    "LoadedModel": "agentrft.jobs.trained",
    "export_run": "agentrft.jobs.trained",
    "is_run_dir": "agentrft.jobs.trained",
    "load_any_model": "agentrft.jobs.trained",
    "load_run": "agentrft.jobs.trained",
    "hash_file": "agentrft.jobs.store",
    "hash_json": "agentrft.jobs.store",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from agentrft.jobs.audit import AuditLog, AuditTampered
    from agentrft.jobs.checkpoint import (CheckpointError, CheckpointInfo, load_checkpoint, load_latest_checkpoint,
                                          params_hash, restore_checkpoint, save_checkpoint)
    from agentrft.jobs.store import RunStore, StoreError, hash_file, hash_json
    from agentrft.jobs.trained import LoadedModel, export_run, is_run_dir, load_any_model, load_run


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
