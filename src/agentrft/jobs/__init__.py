"""Run bookkeeping: the run directory's SQLite store and its crash-safe checkpoints.

See docs/runs.md for the layout and the checkpoint protocol. Names are
imported lazily so that readers of the store (dashboard, job API) do not pay
for importing torch, which only the checkpoint module needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "CheckpointError": "agentrft.jobs.checkpoint",
    "CheckpointInfo": "agentrft.jobs.checkpoint",
    "load_latest_checkpoint": "agentrft.jobs.checkpoint",
    "params_hash": "agentrft.jobs.checkpoint",
    "restore_checkpoint": "agentrft.jobs.checkpoint",
    "save_checkpoint": "agentrft.jobs.checkpoint",
    "RunStore": "agentrft.jobs.store",
    "StoreError": "agentrft.jobs.store",
    "hash_file": "agentrft.jobs.store",
    "hash_json": "agentrft.jobs.store",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from agentrft.jobs.checkpoint import (CheckpointError, CheckpointInfo, load_latest_checkpoint, params_hash,
                                          restore_checkpoint, save_checkpoint)
    from agentrft.jobs.store import RunStore, StoreError, hash_file, hash_json


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
