"""The model registry: named aliases over frozen copies of trained weights, with promotion and rollback.

:class:`ModelRegistry` writes the files :mod:`agentrft.jobs.registry_store` defines (read that module's
docstring for the layout). Promotion goes in two steps so that what the gate
measured is exactly what gets promoted, even while the run keeps training:

1. :meth:`ModelRegistry.stage` copies a run's checkpoint weights (and its resolved config) into a private
   staging folder beside the registry and hashes the copy; the gate loads the candidate from there;
2. :meth:`ModelRegistry.promote_staged` moves that folder into ``objects/<sha256>`` (content-addressed: the
   same weights promoted twice are stored once) and appends an entry to the alias, under the registry lock,
   refusing if the alias moved since the gate read it.

A refused candidate's staging folder is deleted, so a refused promotion leaves the registry's files as they
were. :meth:`ModelRegistry.rollback` points the alias back at the entry that was current before the current one
was promoted: a rewrite of one small file, no eval and no copy. Every promotion and rollback is appended to the
audit log (:mod:`agentrft.jobs.audit`) before the alias changes: a change that cannot be recorded is not made.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentrft.errors import AgentRFTError
from agentrft.jobs.audit import AUDIT_NAME, AuditLog, audit_home, default_actor, run_lineage_fields
from agentrft.jobs.registry_store import CONFIG_NAME, OBJECTS_DIR, ORIGIN_NAME, AliasRecord, RegistryEntry, \
    RegistryError, alias_names, fsync_dir, load_registered, read_alias, registry_lock, registry_root, \
    resolve_alias, valid_alias, weights_files, weights_sha256, write_alias

__all__ = ["ModelRegistry", "StagedModel"]

STAGING_DIR = ".registry-staging"
_ANY = object()


@dataclass
class StagedModel:
    """A run's checkpoint copied out of the run, waiting for its gate: ``folder`` holds an object's files."""

    folder: Path
    weights_sha256: str
    run_dir: Path
    checkpoint: Path
    step: int
    weights: str

    def entry(self, **fields: Any) -> RegistryEntry:
        """A registry entry for these weights (the rest of its fields given), e.g. to load the staged copy."""
        defaults = {"index": -1, "object": str(self.folder), "promoted_at": 0.0, "promoted_by": "",
                    "previous": None}
        return RegistryEntry(weights_sha256=self.weights_sha256, run_dir=str(self.run_dir),
                             checkpoint=str(self.checkpoint), step=self.step, weights=self.weights,
                             **{**defaults, **fields})


class ModelRegistry:
    """The registry under ``home/registry`` (``home`` None: ``$AGENTRFT_HOME`` or ~/.agentrft); its audit log
    is ``home/audit.jsonl``."""

    def __init__(self, home: str | Path | None = None) -> None:
        self.home = Path(home).expanduser() if home is not None else audit_home()
        self.root = registry_root(self.home)
        self.audit = AuditLog(self.home / AUDIT_NAME)

    # -- reading ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        return alias_names(self.root)

    def record(self, name: str) -> AliasRecord | None:
        return read_alias(self.root, name)

    def current(self, name: str) -> RegistryEntry | None:
        """The entry ``name`` points at, or None when it was never promoted."""
        record = read_alias(self.root, name)
        return None if record is None else record.current_entry

    def history(self, name: str) -> list[RegistryEntry]:
        """Every promotion of ``name``, oldest first (rollbacks move ``current``, they add no entry)."""
        record = read_alias(self.root, name)
        return [] if record is None else list(record.entries)

    def object_path(self, entry: RegistryEntry) -> Path:
        return self.root / entry.object

    def load(self, name: str, *, device: str | None = None):
        """The current model of ``name`` as a :class:`~agentrft.jobs.trained.LoadedModel`."""
        _, entry = resolve_alias(self.root, name)
        return load_registered(self.root, entry, device=device)

    # -- promotion ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def stage(self, run_dir: str | Path, step: int | None = None) -> Iterator[StagedModel]:
        """Copy the run's latest (or ``step``'s) verified checkpoint weights and resolved config into a staging
        folder; removed on exit unless :meth:`promote_staged` took it."""
        from agentrft.jobs.checkpoint import load_checkpoint, load_latest_checkpoint
        from agentrft.jobs.trained import is_run_dir, run_config

        run_dir = Path(run_dir).expanduser().resolve()
        if not is_run_dir(run_dir):
            raise AgentRFTError(f"{run_dir} is not a run directory (no run.db): promote a run written by "
                                "`agentrft train`")
        info = load_checkpoint(run_dir, step) if step is not None else load_latest_checkpoint(run_dir)
        if info is None:
            raise AgentRFTError(f"{run_dir} has no checkpoint yet; nothing to promote")
        cfg = run_config(run_dir)
        staging = self.home / STAGING_DIR
        staging.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="stage-", dir=staging))
        try:
            for rel in weights_files(info.path):
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(info.path / rel, folder / rel)
            (folder / CONFIG_NAME).write_text(json.dumps(cfg.model_dump(mode="json"), indent=1, sort_keys=True))
            (folder / ORIGIN_NAME).write_text(json.dumps({
                "run_dir": str(run_dir), "checkpoint": str(info.path), "step": info.step, "weights": info.weights,
                "copied_at": time.time()}, indent=1, sort_keys=True))
            # hashed from the copy: a checkpoint replaced while it was copied cannot slip in under another hash
            staged = StagedModel(folder, weights_sha256(folder), run_dir, info.path, info.step, info.weights)
            yield staged
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(OSError):
                staging.rmdir()  # only when empty: another promotion may be staging beside this one

    def promote_staged(self, name: str, staged: StagedModel, *, gate: dict[str, Any] | None = None,
                       expected_current: str | None | object = _ANY, actor: str | None = None) -> RegistryEntry:
        """Make ``staged`` the current target of ``name``. ``expected_current``: the weights hash the alias must
        still point at (None: no target yet), else RegistryError (another promotion or rollback won the race)."""
        valid_alias(name)
        actor = actor or default_actor()
        with registry_lock(self.root):
            record = read_alias(self.root, name) or AliasRecord(name)
            previous = record.current_entry
            now = previous.weights_sha256 if previous is not None else None
            if expected_current is not _ANY and now != expected_current:
                raise RegistryError(f"{name!r} changed while the gate ran (it now points at "
                                    f"{(now or 'nothing')[:16]}); run the gate again")
            obj = self._store(staged)
            entry = staged.entry(index=len(record.entries), object=obj.relative_to(self.root).as_posix(),
                                 promoted_at=time.time(), promoted_by=actor, previous=record.current,
                                 gate=gate or {})
            self.audit.append("promote", subject=name, actor=actor, details={
                "weights_sha256": entry.weights_sha256, "run_dir": entry.run_dir, "step": entry.step,
                "checkpoint": entry.checkpoint, "object": entry.object,
                "previous_weights_sha256": now, "previous_index": entry.previous, "index": entry.index,
                "gate": gate or {}, "run": _lineage(staged.run_dir)})
            record.entries.append(entry)
            record.current = entry.index
            write_alias(self.root, record)
        return entry

    def promote(self, name: str, run_dir: str | Path, *, step: int | None = None, gate: dict[str, Any] | None = None,
                actor: str | None = None) -> RegistryEntry:
        """Stage and promote in one call, with no gate of its own: for callers that decided already (the audit
        entry keeps ``gate`` as given, ``{}`` when none). :func:`agentrft.governance.promote.promote` is the
        gated path."""
        with self.stage(run_dir, step) as staged:
            return self.promote_staged(name, staged, gate=gate, actor=actor)

    def _store(self, staged: StagedModel) -> Path:
        """Move the staged folder to ``objects/<sha256>``; an object already there must hash the same."""
        target = self.root / OBJECTS_DIR / staged.weights_sha256
        if target.is_dir():
            if weights_sha256(target) != staged.weights_sha256:
                raise RegistryError(f"{target} no longer holds the weights it is named after; move it aside")
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        for path in sorted(staged.folder.rglob("*"), key=lambda p: -len(p.parts)):
            if path.is_file():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
        staged.folder.rename(target)  # same file system: the staging folder is beside the registry
        fsync_dir(target.parent)
        return target

    # -- rollback ---------------------------------------------------------------------------

    def rollback(self, name: str, *, actor: str | None = None) -> tuple[RegistryEntry, RegistryEntry]:
        """Point ``name`` back at the entry that was current before the current one was promoted; returns
        ``(left, restored)``. Instant: the alias file is rewritten, nothing is evaluated or copied."""
        actor = actor or default_actor()
        with registry_lock(self.root):
            record, current = resolve_alias(self.root, name)
            if current.previous is None:
                raise RegistryError(f"{name!r} points at its first promoted model ({current.weights_sha256[:16]}); "
                                    "there is nothing before it to roll back to")
            restored = record.entries[current.previous]
            if not self.object_path(restored).is_dir():
                raise RegistryError(f"the previous target's weights {self.object_path(restored)} are gone")
            self.audit.append("rollback", subject=name, actor=actor, details={
                "from_weights_sha256": current.weights_sha256, "from_index": current.index,
                "to_weights_sha256": restored.weights_sha256, "to_index": restored.index,
                "to_run_dir": restored.run_dir, "to_step": restored.step})
            record.current = restored.index
            write_alias(self.root, record)
        return current, restored


def _lineage(run_dir: Path) -> dict[str, Any]:
    """The run's identity for the audit entry (its store may be unreadable: then say so, do not fail)."""
    try:
        return run_lineage_fields(run_dir)
    except Exception as e:  # noqa: BLE001 - a promotion of copied weights does not depend on the run's store
        return {"run_dir": str(run_dir), "error": f"{type(e).__name__}: {e}"}
