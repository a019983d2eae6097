"""The audit log: an append-only, hash-chained record of every train, promote, rollback and serve decision.

One JSON object per line in ``audit_home()/audit.jsonl`` (``$AGENTRFT_HOME``,
default ``~/.agentrft``)::

    {"seq": 3, "time": "2026-12-07T10:00:00.123456+00:00", "actor": "ana@gpu-1", "action": "promote",
     "subject": "prod", "details": {...}, "prev_hash": "<hash of entry 2>", "hash": "<sha256>"}

``hash`` is the sha256 of the canonical JSON (:func:`~agentrft.jobs.store.hash_json`) of the entry without
``hash``, and ``prev_hash`` is the previous entry's ``hash`` (:data:`GENESIS` for the first). So changing any
field of a past entry changes its hash; an edit that also recomputes that hash breaks the next entry's
``prev_hash``; a deleted, inserted or reordered line breaks ``seq`` and ``prev_hash``; a cut-off last line is
not a complete JSON object. :meth:`AuditLog.verify` names each problem.

What it does not protect against: someone who rewrites the whole file from the first entry on, recomputing
every hash, or who deletes entries from the end. Anchor the head hash elsewhere (``agentrft lineage`` prints
it; a ticket, a commit message, a second machine) and compare it later with :meth:`AuditLog.verify`'s
``expected_head``.

Writers: the file is opened with ``O_APPEND`` under an exclusive ``flock`` on the file itself, the last entry
is checked before the next is chained to it (a broken chain is never extended: :class:`AuditChainBroken`), and
each line is fsynced before the lock is dropped, so concurrent processes keep one valid chain.
"""

from __future__ import annotations

import datetime
import fcntl
import getpass
import json
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agentrft.errors import AgentRFTError
from agentrft.jobs.store import DB_NAME, RunStore, hash_json

__all__ = ["ACTIONS", "AUDIT_NAME", "GENESIS", "AuditChainBroken", "AuditLog", "AuditTampered", "audit_home",
           "SUMMARY_METRICS", "default_actor", "metrics_summary", "run_lineage_fields", "verify_or_raise", "weights_hash"]

AUDIT_NAME = "audit.jsonl"
GENESIS = "0" * 64
"""The ``prev_hash`` of the first entry."""
ACTIONS = ("train_started", "train_finished", "train_failed", "train_stopped", "promote", "promote_refused",
           "rollback", "serve")
"""The actions agentrft records; any other lower-case name is accepted too (a newer writer's)."""
_ACTION = re.compile(r"^[a-z][a-z0-9_]*$")
_FIELDS = ("seq", "time", "actor", "action", "subject", "details", "prev_hash")


class AuditTampered(AgentRFTError):
    """The audit log's hash chain is broken: an entry was edited, removed, reordered or cut off."""


class AuditChainBroken(AuditTampered):
    """Refused to append: the last entry does not check out, so a new one would hide the damage."""


def audit_home() -> Path:
    """``$AGENTRFT_HOME`` if set, else ``~/.agentrft``; created on demand."""
    home = Path(os.environ.get("AGENTRFT_HOME") or Path.home() / ".agentrft").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def default_actor() -> str:
    """``user@host`` of this process (the uid when the user has no name, as in some containers)."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


class AuditLog:
    """The audit log at ``path`` (default ``audit_home() / "audit.jsonl"``). See the module docstring."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else audit_home() / AUDIT_NAME

    def append(self, action: str, *, subject: str, details: Mapping[str, Any] | None = None,
               actor: str | None = None) -> dict[str, Any]:
        """Chain one entry to the log and return it as written. Raises :class:`AuditChainBroken` when the last
        entry does not check out (nothing is written then)."""
        if not _ACTION.match(action):
            raise ValueError(f"audit action must be a lower-case name like 'promote', got {action!r}")
        # details as they will read back: paths and other objects as text, so the hash is of what is stored
        details = json.loads(json.dumps(dict(details or {}), default=str))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by close
            last = _last_entry(self.path, _read_all(fd))
            entry = {"seq": 0 if last is None else last["seq"] + 1,
                     "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds"),
                     "actor": actor or default_actor(), "action": action, "subject": str(subject),
                     "details": details, "prev_hash": GENESIS if last is None else last["hash"]}
            entry["hash"] = hash_json(entry)
            line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
            if os.write(fd, line) != len(line):
                raise OSError(f"short write to {self.path}")
            os.fsync(fd)
        finally:
            os.close(fd)
        return entry

    def entries(self) -> list[dict[str, Any]]:
        """Every entry that parses, in file order (:meth:`verify` says whether they form an intact chain)."""
        out = []
        for _, line in _lines(self.path):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                out.append(entry)
        return out

    def head(self) -> str | None:
        """The last entry's hash (anchor it elsewhere to detect a rewritten log), or None for an empty log."""
        entries = self.entries()
        return entries[-1].get("hash") if entries else None

    def verify(self, expected_head: str | None = None) -> list[str]:
        """``[]`` when the chain is intact, else one message per problem naming the entry (seq and line).
        ``expected_head``: a head hash anchored earlier; it must still be one of the entries' hashes."""
        problems: list[str] = []
        data = self.path.read_bytes() if self.path.is_file() else b""
        if data and not data.endswith(b"\n"):
            last_line = data.count(b"\n") + 1
            problems.append(f"line {last_line}: the last line is incomplete (no newline): "
                            "the log was cut off or a write was interrupted")
        prev_hash, prev_seq, hashes = GENESIS, -1, set()
        for number, line in _lines(self.path):
            try:
                entry = json.loads(line)
            except ValueError:
                problems.append(f"line {number}: not a JSON entry (cut off or edited by hand)")
                prev_hash, prev_seq = None, prev_seq + 1
                continue
            problem = _entry_problem(entry)
            if problem:
                problems.append(f"line {number}: {problem}")
                prev_hash, prev_seq = None, prev_seq + 1
                continue
            where = f"entry seq {entry['seq']} (line {number}, {entry['action']} {entry['subject']})"
            if hash_json({k: entry[k] for k in _FIELDS}) != entry["hash"]:
                problems.append(f"{where}: its contents do not match its hash: the entry was edited")
            if entry["seq"] != prev_seq + 1:
                problems.append(f"{where}: seq {entry['seq']} follows seq {prev_seq}: "
                                "entries were removed, inserted or reordered")
            if prev_hash is not None and entry["prev_hash"] != prev_hash:
                problems.append(f"{where}: prev_hash does not match the entry before it: an earlier entry was "
                                "edited, removed or reordered")
            prev_hash, prev_seq = entry["hash"], entry["seq"]
            hashes.add(entry["hash"])
        if expected_head is not None and expected_head not in hashes:
            problems.append(f"the anchored head {expected_head[:16]}... is not in the log: it was rewritten or "
                            "entries were removed from its end")
        return problems

    def verify_or_raise(self, expected_head: str | None = None) -> None:
        """:meth:`verify`, raising :class:`AuditTampered` with every problem when there is one."""
        problems = self.verify(expected_head)
        if problems:
            raise AuditTampered(f"audit log {self.path} failed verification:\n  " + "\n  ".join(problems))


def verify_or_raise(path: str | os.PathLike[str] | None = None, expected_head: str | None = None) -> None:
    """Verify the audit log at ``path`` (default: :func:`audit_home`'s), raising :class:`AuditTampered`."""
    AuditLog(path).verify_or_raise(expected_head)


def _entry_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return "not a JSON object"
    missing = [k for k in (*_FIELDS, "hash") if k not in entry]
    if missing:
        return f"entry lacks {', '.join(missing)}"
    extra = sorted(set(entry) - {*_FIELDS, "hash"})
    if extra:
        return f"entry seq {entry['seq']} has fields no writer adds ({', '.join(extra)}): it was edited"
    if not isinstance(entry["seq"], int) or not isinstance(entry["hash"], str):
        return "seq or hash has the wrong type: it was edited"
    return None


def _read_all(fd: int) -> bytes:
    chunks, offset = [], 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, text)`` of each non-blank line."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    return [(n, line) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]


def _last_entry(path: Path, data: bytes) -> dict[str, Any] | None:
    """The last entry, checked: complete, well-formed and matching its own hash; None for an empty log."""
    if not data.strip():
        return None
    if not data.endswith(b"\n"):
        raise AuditChainBroken(f"refusing to append to {path}: its last line is incomplete (cut off); "
                               "run `agentrft audit verify` and restore the log")
    last_line = data.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    try:
        entry = json.loads(last_line)
    except ValueError:
        entry = None
    problem = _entry_problem(entry) if entry is not None else "not a JSON entry"
    if problem is None and hash_json({k: entry[k] for k in _FIELDS}) != entry["hash"]:
        problem = f"entry seq {entry['seq']} does not match its hash (edited)"
    if problem:
        raise AuditChainBroken(f"refusing to append to {path}: its last entry does not check out ({problem}); "
                               "run `agentrft audit verify` and restore the log")
    return entry


# -- what identifies a run ------------------------------------------------------------


def run_lineage_fields(run_dir: str | os.PathLike[str], store: RunStore | None = None) -> dict[str, Any]:
    """What identifies a run directory, as its store recorded it when the run was created: ``run_dir``
    (absolute), ``run_id``, ``method``, ``status``, ``base_model`` (the config's name), ``config_hash``,
    ``dataset_hash``, ``grader_hash``, ``base_model_hash``, ``data_hashes`` (every other data hash the run
    recorded: demonstrations, pairs), ``parent_run`` (``init_from``, absolute, or None) and ``weights_hash`` (of
    the latest checkpoint's weight files, from its manifest; None before the first). Nothing is recomputed:
    the hashes are the runner's (:func:`agentrft.train.runner._hashes`). ``store``: the run's open store, if
    the caller has one (one ``RunStore`` per process and run directory). Raises ``FileNotFoundError`` when
    ``run_dir`` holds no run store."""
    run_dir = Path(run_dir).expanduser().resolve()
    if store is not None:
        run = store.get_run() or {}
    elif not (run_dir / DB_NAME).is_file():
        raise FileNotFoundError(f"{run_dir} holds no run ({DB_NAME} is missing)")
    else:
        with RunStore(run_dir) as own:
            run = own.get_run() or {}
    hashes = dict(run.get("hashes") or {})
    config = run.get("resolved_config") or {}
    parent = config.get("init_from")
    return {
        "run_dir": str(run_dir), "run_id": run.get("run_id"), "method": run.get("method"),
        "status": run.get("status"), "base_model": config.get("model"),
        "config_hash": hashes.get("config"), "dataset_hash": run.get("dataset_hash"),
        "grader_hash": run.get("grader_hash"), "base_model_hash": run.get("base_model_hash"),
        "data_hashes": {k: v for k, v in hashes.items() if k not in ("config", "dataset", "grader", "base_model")},
        "parent_run": str(Path(parent).expanduser().resolve()) if parent else None,
        "weights_hash": weights_hash(run_dir),
    }


def weights_hash(run_dir: str | os.PathLike[str]) -> str | None:
    """A hash of the latest checkpoint's weight files (``model.safetensors`` or ``adapter/*``), from the sha256
    its manifest recorded: the canonical JSON ``{relative path: sha256}``, the same id the model registry gives
    these weights (:func:`agentrft.jobs.registry_store.weights_sha256`); None when the run has no checkpoint."""
    root = Path(run_dir) / "checkpoints"  # jobs.checkpoint's layout; read without importing torch
    try:
        name = (root / "latest").read_text().strip()
        manifest = json.loads((root / name / "MANIFEST.json").read_text())
    except (OSError, ValueError):
        return None
    files = manifest.get("files") or {}
    weights = {k: v.get("sha256") for k, v in files.items()
               if k == "model.safetensors" or k.startswith("adapter/")}
    return hash_json(weights) if weights else None


SUMMARY_METRICS = ("reward_mean", "accuracy", "tool_calls_per_rollout", "tool_error_rate", "n_rollouts")
"""The validation figures a run's summary carries (what :func:`agentrft.evaluation.summarize` names them)."""


def metrics_summary(store: RunStore) -> dict[str, Any]:
    """A run's figures from its store: ``steps`` (the last training step logged), ``final_validation`` (the
    :data:`SUMMARY_METRICS` of the last eval, with its ``step``) and ``best_validation`` (the eval with the
    highest ``reward_mean``); the validation parts are None when the run never evaluated."""
    train = store.metrics_frame("train")
    evals = store.metrics_frame("validation")

    def figures(step: int) -> dict[str, Any]:
        return {"step": step, **{k: evals[step][k] for k in SUMMARY_METRICS if k in evals[step]}}

    scored = [s for s in evals if isinstance(evals[s].get("reward_mean"), float)
              and evals[s]["reward_mean"] == evals[s]["reward_mean"]]  # NaN is never the best
    return {"steps": max(train, default=0),
            "final_validation": figures(max(evals)) if evals else None,
            "best_validation": figures(max(scored, key=lambda s: (evals[s]["reward_mean"], -s))) if scored else None}
