"""The model registry's files: aliases, their history, and the frozen weights they point at.

``agentrft promote RUN --as NAME`` (:mod:`agentrft.governance.registry`) writes
here and ``agentrft serve --model NAME`` (:mod:`agentrft.serving.alias`) reads
here. The format and its reader live in ``jobs`` because serving sits below
governance in the layers (docs/architecture.md) and must read an alias without
importing the code that writes one. Layout, under ``HOME/registry``
(``HOME``: ``--home``, else ``$AGENTRFT_HOME``, else ``~/.agentrft``)::

    .lock                        flock held by every writer (promote, rollback)
    aliases/NAME.json            {"format_version", "name", "current": index | null, "entries": [entry, ...]}
    objects/<sha256>/            one promoted model, named by its weights hash:
        config.json              the run's resolved config (base model, LoRA, chat format) as run.db stored it
        origin.json              the run directory, checkpoint and step it was copied from, and when
        adapter/...              the checkpoint's LoRA adapter (LoRA runs), or
        model.safetensors        its trainable weights (full fine-tuning)

An entry is one promotion: ``weights_sha256``, ``object`` (the folder above), ``run_dir``, ``checkpoint``,
``step``, ``weights`` (``lora`` | ``full``), ``promoted_at``, ``promoted_by``, ``previous`` (the index of the
entry that was current when it was promoted, null for the first) and ``gate`` (the gate's summary).
``current`` indexes ``entries``; rollback sets it to the current entry's ``previous``, so rollback is a pointer
flip: no eval, no copy. Entries are only ever appended.

Why copies: a promoted model must not change when its run continues, is cleaned up or is deleted, so promotion
copies the weight files into ``objects/`` and serving loads them from there, re-hashing them first
(:func:`load_registered` refuses weights that no longer match the hash they were promoted under). The base
model named in ``config.json`` is referenced, not copied.

Why ``os.replace``: an alias file is written to a temporary sibling, fsynced and renamed over the old one, so a
reader sees the old alias or the new one, never half of either; a new inode per write is also what a watching
server compares (:func:`alias_signature`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agentrft.errors import AgentRFTError
from agentrft.jobs.store import hash_file, hash_json

__all__ = ["ADAPTER_DIR", "CONFIG_NAME", "FULL_WEIGHTS", "ORIGIN_NAME", "AliasRecord", "RegistryEntry",
           "RegistryError", "alias_names", "alias_path", "alias_signature", "fsync_dir", "load_registered",
           "object_path",
           "read_alias", "registry_lock", "registry_root", "resolve_alias", "valid_alias", "weights_files",
           "weights_sha256", "write_alias"]

FORMAT_VERSION = 1
REGISTRY_DIR = "registry"
ALIASES_DIR = "aliases"
OBJECTS_DIR = "objects"
LOCK_NAME = ".lock"
CONFIG_NAME = "config.json"
ORIGIN_NAME = "origin.json"
ADAPTER_DIR = "adapter"  # jobs.checkpoint's names: an object's weights are laid out as in a checkpoint
FULL_WEIGHTS = "model.safetensors"
_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RegistryError(AgentRFTError):
    """An alias that does not exist, a registry file that does not parse, or weights that changed on disk."""


@dataclass
class RegistryEntry:
    """One promotion of an alias (see the module docstring for each field)."""

    index: int
    weights_sha256: str
    object: str
    """The object folder, relative to the registry root (``objects/<sha256>``)."""
    run_dir: str
    checkpoint: str
    step: int
    weights: str
    promoted_at: float
    promoted_by: str
    previous: int | None
    gate: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RegistryEntry":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AliasRecord:
    """An alias file: its entries (every promotion, in order) and which one is current."""

    name: str
    current: int | None = None
    entries: list[RegistryEntry] = field(default_factory=list)

    @property
    def current_entry(self) -> RegistryEntry | None:
        return None if self.current is None else self.entries[self.current]

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "name": self.name, "current": self.current,
                "entries": [e.to_dict() for e in self.entries]}


def registry_root(home: str | os.PathLike[str] | None = None) -> Path:
    """``HOME/registry``; ``home`` None: :func:`agentrft.jobs.audit.audit_home` (``$AGENTRFT_HOME`` or ~/.agentrft)."""
    if home is None:
        from agentrft.jobs.audit import audit_home

        home = audit_home()
    return Path(home).expanduser() / REGISTRY_DIR


def valid_alias(name: str) -> str:
    """``name`` if it can name an alias (letters, digits, ``.``, ``_``, ``-``; no path), else RegistryError."""
    if not _ALIAS.match(name) or name in (".", ".."):
        raise RegistryError(f"{name!r} cannot name a model alias: use letters, digits, '.', '_' and '-' "
                            "(at most 128, starting with a letter or digit)")
    return name


def alias_path(root: Path, name: str) -> Path:
    return root / ALIASES_DIR / f"{valid_alias(name)}.json"


def alias_names(root: Path) -> list[str]:
    folder = root / ALIASES_DIR
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def read_alias(root: Path, name: str) -> AliasRecord | None:
    """The alias ``name``, or None when it was never promoted. RegistryError when its file does not parse."""
    path = alias_path(root, name)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise RegistryError(f"alias file {path} is unreadable ({e}); restore it from a backup") from None
    try:
        if raw["format_version"] > FORMAT_VERSION:
            raise RegistryError(f"{path} has registry format {raw['format_version']}, newer than this agentrft "
                                f"reads ({FORMAT_VERSION}); upgrade agentrft")
        entries = [RegistryEntry.from_dict(e) for e in raw["entries"]]
        current = raw["current"]
        if current is not None and not 0 <= current < len(entries):
            raise ValueError(f"current {current} indexes no entry")
    except (KeyError, TypeError, ValueError) as e:
        raise RegistryError(f"alias file {path} is malformed ({type(e).__name__}: {e})") from None
    return AliasRecord(raw.get("name", name), current, entries)


def write_alias(root: Path, record: AliasRecord) -> None:
    """Replace the alias file atomically (temporary sibling, fsync, ``os.replace``, fsync the folder).
    Callers hold :func:`registry_lock`."""
    path = alias_path(root, record.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record.to_dict(), f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def registry_lock(root: Path) -> Iterator[None]:
    """Hold the registry's writer lock (an exclusive ``flock`` on ``.lock``; the kernel drops it with the
    process). Readers take no lock: every file they read is replaced whole."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def alias_signature(root: Path, name: str) -> tuple[int, int, int] | None:
    """``(inode, mtime_ns, size)`` of the alias file (None when absent): it changes with every write, because
    every write is a rename of a new file."""
    try:
        st = alias_path(root, name).stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def object_path(root: Path, entry: RegistryEntry) -> Path:
    return root / entry.object


def weights_files(folder: Path) -> list[str]:
    """The weight files of a checkpoint or registry object, relative to it: ``adapter/**`` or
    ``model.safetensors``."""
    adapter = folder / ADAPTER_DIR
    if adapter.is_dir():
        return sorted(p.relative_to(folder).as_posix() for p in adapter.rglob("*") if p.is_file())
    return [FULL_WEIGHTS] if (folder / FULL_WEIGHTS).is_file() else []


def weights_sha256(folder: Path) -> str:
    """sha256 of the canonical JSON ``{relative path: sha256 of the file}`` over :func:`weights_files`, read
    from the files themselves: equal for a checkpoint and its registry copy, different once any byte changes."""
    files = weights_files(folder)
    if not files:
        raise RegistryError(f"{folder} holds no weights (neither {ADAPTER_DIR}/ nor {FULL_WEIGHTS})")
    return hash_json({rel: hash_file(folder / rel) for rel in files})


def resolve_alias(root: Path, name: str) -> tuple[AliasRecord, RegistryEntry]:
    """The alias and its current entry; RegistryError naming the known aliases when there is none."""
    record = read_alias(root, name)
    if record is None or record.current_entry is None:
        known = ", ".join(alias_names(root)) or "none"
        raise RegistryError(f"no model is promoted as {name!r} in {root} (aliases: {known}); "
                            f"promote one with `agentrft promote RUN --as {name} --gate gate.yaml`")
    return record, record.current_entry


def load_registered(root: Path, entry: RegistryEntry, *, device: str | None = None):
    """Rebuild a registry entry's model (:class:`~agentrft.jobs.trained.LoadedModel`): the base model and
    LoRA as the run's stored config builds them, then the object's weights, which must still hash to
    ``entry.weights_sha256``. ``device`` overrides the run's ``training.device`` as in
    :func:`~agentrft.jobs.trained.load_run`."""
    from agentrft.config import load_config, migrate_stored
    from agentrft.jobs.checkpoint import CheckpointInfo, restore_checkpoint
    from agentrft.jobs.trained import LoadedModel
    from agentrft.models.policy import build_policy

    folder = object_path(root, entry)
    actual = weights_sha256(folder)
    if actual != entry.weights_sha256:
        raise RegistryError(f"{folder}: the weights hash to {actual[:16]}..., not the {entry.weights_sha256[:16]}... "
                            "they were promoted under; the registry copy was changed, refusing to load it")
    cfg = load_config(migrate_stored(json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))))
    if device is not None and device != cfg.training.device:
        cfg.training.device, cfg.training.dtype = device, "auto"
    policy = build_policy(cfg)
    info = CheckpointInfo(path=folder, step=entry.step, weights=entry.weights, metric=None,  # type: ignore[arg-type]
                          trainer_state={})
    restore_checkpoint(info, policy.model, None, None, restore_rng=False)
    model = policy.model
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedModel(model, policy.tokenizer, cfg.chat_format,
                       f"registry {folder.name[:12]} (run {entry.run_dir} step {entry.step}, base model {cfg.model})",
                       step=entry.step, cpu_matmul=cfg.training.cpu_matmul)
