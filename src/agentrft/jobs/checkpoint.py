"""Crash-safe checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is a folder ``run_dir/checkpoints/step-000010/``::

    adapter/               LoRA runs: the peft adapter (model.save_pretrained), loadable by
                           PeftModel.from_pretrained and LoRA-serving engines as is
    model.safetensors      full fine-tuning: the trainable parameters (+ persistent buffers)
    optimizer.pt           optimizer.state_dict()
    scheduler.pt           scheduler.state_dict(), when there is a scheduler
    rng.pt                 python, numpy, torch CPU (and CUDA) generator states
    trainer_state.json     step, metric, and the trainer's own dict (data cursor, best metric, ...)
    MANIFEST.json          written last: every other file with its size and sha256

and ``run_dir/checkpoints/latest`` is a one-line file naming the newest committed one.

Why it survives ``kill -9`` and power loss at any instant (see docs/runs.md):

1. everything is written into a temporary sibling ``.tmp-step-000010-<pid>-<hex>``
   (same filesystem, so the later rename is atomic), each file and folder fsynced;
2. the temp folder is renamed to its final name and the parent fsynced — the
   checkpoint appears whole or not at all (an existing folder of that name, left
   by an earlier interrupted try, is swapped out atomically with
   ``renameat2(RENAME_EXCHANGE)`` where the kernel has it);
3. ``latest`` is replaced atomically (write ``latest.tmp``, fsync, ``os.replace``,
   fsync the parent), so it always names a complete checkpoint;
4. only then are old checkpoints removed (renamed to ``.trash-*``, then deleted),
   so at every instant at least one complete checkpoint exists.

Loading trusts nothing: :func:`load_latest_checkpoint` re-hashes every file
against the manifest and falls back to the newest valid checkpoint when the
pointer is missing, garbage, or names a damaged checkpoint. If checkpoints exist
but none is valid it raises :class:`CheckpointError` rather than returning None,
because "no checkpoint" would silently restart a long run from step 0.

Departures from the usual ``Trainer.save_model`` approach: full fine-tuning saves
only trainable parameters (tied weights such as SmolLM2's ``lm_head`` /
``embed_tokens`` are one parameter and are written once, so safetensors never sees
shared storage), and optimizer/RNG files are read back with ``weights_only=True``
so a checkpoint cannot execute code.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import logging
import os
import random
import re
import secrets
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from agentrft.errors import AgentRFTError
from agentrft.jobs.store import hash_file

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHECKPOINTS_DIR = "checkpoints"
LATEST = "latest"
MANIFEST = "MANIFEST.json"
TRAINER_STATE = "trainer_state.json"
FULL_WEIGHTS = "model.safetensors"
ADAPTER_DIR = "adapter"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"
RNG = "rng.pt"

_STEP_DIR = re.compile(r"^step-(\d{6,})$")
_TMP_DIR = re.compile(r"^\.tmp-step-\d+-(\d+)-[0-9a-f]+$")
_save_lock = threading.Lock()  # one save at a time per process: own-pid temp dirs are then always stale

WeightsKind = Literal["lora", "full"]


class CheckpointError(AgentRFTError):
    """Checkpoints exist but none can be used, or one does not fit the model it is restored into."""


@dataclass
class CheckpointInfo:
    """A verified checkpoint, as found by :func:`load_latest_checkpoint`."""

    path: Path
    step: int
    weights: WeightsKind
    metric: float | None
    trainer_state: dict[str, Any]
    warnings: list[str] = field(default_factory=list)  # why the `latest` pointer was not used, if it was not


def step_dir_name(step: int) -> str:
    return f"step-{int(step):06d}"


# -- saving ----------------------------------------------------------------------


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any = None,
    *,
    trainer_state: dict[str, Any],
    metric: float | None = None,
    keep_best_k: int = 3,
    higher_is_better: bool = True,
) -> Path:
    """Write the checkpoint of ``step`` atomically, point ``latest`` at it, apply retention.

    Retention keeps the checkpoint just written and the ``keep_best_k`` best by
    ``metric`` (checkpoints without a metric only survive as the latest).
    Returns the checkpoint folder.
    """
    if keep_best_k < 0:
        raise ValueError("keep_best_k must be >= 0")
    try:  # fail before touching the disk if the trainer's state is not JSON
        state_text = json.dumps({
            "format_version": FORMAT_VERSION,
            "step": int(step),
            "metric": None if metric is None else float(metric),
            "higher_is_better": higher_is_better,
            "weights": "lora" if _is_peft(model) else "full",
            "saved_at": time.time(),
            "trainer_state": trainer_state,
        }, indent=1, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"trainer_state must be JSON-serialisable: {e}") from e

    root = Path(run_dir) / CHECKPOINTS_DIR
    name = step_dir_name(step)
    with _save_lock:
        root.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(root)
        tmp = root / f".tmp-{name}-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            _write_weights(tmp, model)
            if optimizer is not None:
                torch.save(optimizer.state_dict(), tmp / OPTIMIZER)
            if scheduler is not None:
                torch.save(scheduler.state_dict(), tmp / SCHEDULER)
            torch.save(_rng_state(), tmp / RNG)
            (tmp / TRAINER_STATE).write_text(state_text)
            _write_manifest(tmp, step)  # last: its presence means every other file is complete
        except Exception as e:  # a full disk: OSError, torch.save's "unexpected pos ...", safetensors' SafetensorError
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(_write_failure(root, step, e)) from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

        final = root / name
        old = None
        if final.exists():  # an earlier try at this step (interrupted, or a replay after resume)
            if _exchange(tmp, final):
                old = tmp  # which now holds the previous folder
            else:
                old = _move_to_trash(final)
                os.rename(tmp, final)
        else:
            os.rename(tmp, final)
        _fsync_dir(root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _point_latest(root, name)
        _apply_retention(root, final, keep_best_k, higher_is_better)
    return final


def _write_failure(root: Path, step: int, error: BaseException) -> str:
    """Why the checkpoint of ``step`` could not be written, saying "disk full" when that is what it was."""
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        free = None
    full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < 64 * 2**20)
    why = (f"the disk is full ({free / 2**20:.1f} MiB free on the file system of {root})" if full and free is not None
           else f"{type(error).__name__}: {error}")
    latest = root / LATEST
    kept = f"the checkpoint {latest.read_text().strip()} is intact" if latest.exists() else "no earlier checkpoint exists"
    return (f"could not write the checkpoint of step {step} to {root}: {why}. Nothing partial was kept and {kept}; "
            "free space (or move out_dir) and run again with --resume")


def _is_peft(model: torch.nn.Module) -> bool:
    peft = sys.modules.get("peft")  # not imported -> the model cannot be a PeftModel
    return peft is not None and isinstance(model, peft.PeftModel)


def _write_weights(folder: Path, model: torch.nn.Module) -> None:
    if _is_peft(model):
        model.save_pretrained(str(folder / ADAPTER_DIR))
        return
    from safetensors.torch import save_file

    tensors = _trainable_tensors(model)
    if not tensors:
        raise CheckpointError("the model has no trainable parameters; nothing to checkpoint")
    seen: set[int] = set()
    out = {}
    for name, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:  # views of one storage (not tied parameters: those are deduplicated)
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    save_file(out, str(folder / FULL_WEIGHTS), metadata={"format": "agentrft-trainable", "version": str(FORMAT_VERSION)})


def _trainable_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters (tied ones once, under their first name) and persistent buffers."""
    out = {n: p for n, p in model.named_parameters() if p.requires_grad}
    persistent = set(model.state_dict().keys())
    out.update({n: b for n, b in model.named_buffers() if n in persistent})
    return out


def _rng_state() -> dict[str, Any]:
    keys_name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"bit_generator": keys_name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _write_manifest(folder: Path, step: int) -> None:
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest, size = _hash_and_fsync(path)
        files[path.relative_to(folder).as_posix()] = {"size": size, "sha256": digest}
    manifest = folder / MANIFEST
    with open(manifest, "w") as f:
        json.dump({"format_version": FORMAT_VERSION, "step": int(step), "files": files}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    for d in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        _fsync_dir(d)
    _fsync_dir(folder)


def _hash_and_fsync(path: Path) -> tuple[str, int]:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # on Linux any descriptor flushes the file's dirty pages
    finally:
        os.close(fd)
    return hash_file(path), path.stat().st_size


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _point_latest(root: Path, name: str) -> None:
    tmp = root / (LATEST + ".tmp")
    with open(tmp, "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / LATEST)
    _fsync_dir(root)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"renameat2 exchange of {a} and {b}: {os.strerror(err)}")


def _move_to_trash(folder: Path) -> Path:
    trash = folder.parent / f".trash-{folder.name}-{os.getpid()}-{secrets.token_hex(4)}"
    os.rename(folder, trash)
    return trash


def _discard(folder: Path) -> None:
    """Delete a folder so that a crash midway never leaves a half-deleted ``step-*``."""
    trash = _move_to_trash(folder)
    _fsync_dir(folder.parent)
    shutil.rmtree(trash, ignore_errors=True)


def _remove_leftovers(root: Path) -> None:
    """Delete what crashed saves left: temp folders of dead processes (or this one), trash, latest.tmp."""
    for p in root.iterdir():
        if p.name.startswith(".trash-"):
            shutil.rmtree(p, ignore_errors=True)
        elif (m := _TMP_DIR.match(p.name)) and (int(m.group(1)) == os.getpid() or not _pid_alive(int(m.group(1)))):
            shutil.rmtree(p, ignore_errors=True)
    (root / (LATEST + ".tmp")).unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def checkpoint_steps(run_dir: str | os.PathLike[str]) -> list[int]:
    """The steps of the committed checkpoint folders of a run, oldest first (not verified)."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    return sorted(step for step, _ in _step_dirs(root)) if root.is_dir() else []


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    """Committed checkpoint folders, newest step first."""
    out = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(out, key=lambda x: x[0], reverse=True)


def _apply_retention(root: Path, latest: Path, keep_best_k: int, higher_is_better: bool) -> None:
    scored = []
    for step, path in _step_dirs(root):
        try:
            metric = json.loads((path / TRAINER_STATE).read_text()).get("metric")
        except (OSError, ValueError):
            metric = None
        if isinstance(metric, (int, float)) and metric == metric:  # NaN never counts as best
            scored.append((metric if higher_is_better else -metric, step, path))
    scored.sort(key=lambda x: (x[0], x[1]), reverse=True)  # ties: the newer one
    keep = {latest} | {path for _, _, path in scored[:keep_best_k]}
    for _, path in _step_dirs(root):
        if path not in keep:
            _discard(path)


# -- loading -----------------------------------------------------------------------


def load_latest_checkpoint(run_dir: str | os.PathLike[str], *, verify_hashes: bool = True) -> CheckpointInfo | None:
    """The checkpoint ``latest`` names, verified; else the newest valid one (with a warning).

    Returns None only when the run has no checkpoint at all. Raises
    :class:`CheckpointError` when checkpoints (or a ``latest`` pointer) exist but
    none is valid. ``verify_hashes=False`` checks presence and sizes only.
    """
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return None
    dirs = _step_dirs(root)
    pointer = root / LATEST
    if not dirs and not pointer.exists():
        return None  # nothing was ever committed (a crash during the first save leaves only .tmp-*)

    warnings: list[str] = []
    problems: list[str] = []
    target: Path | None = None
    if pointer.exists():
        try:
            name = pointer.read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            name = f"<unreadable: {e}>"
        if _STEP_DIR.match(name) and (root / name).is_dir():
            target = root / name
            problem = _verify(target, verify_hashes)
            if problem is None:
                return _info(target, warnings)
            problems.append(f"{name}: {problem}")
            warnings.append(f"latest checkpoint {name} is damaged ({problem})")
        else:
            warnings.append(f"the latest pointer {pointer} names no checkpoint folder ({name[:80]!r})")
    else:
        warnings.append(f"{pointer} is missing")

    for _, path in dirs:
        if path == target:
            continue
        problem = _verify(path, verify_hashes)
        if problem is None:
            warnings.append(f"falling back to {path.name}, the newest valid checkpoint")
            for w in warnings:
                logger.warning("%s: %s", run_dir, w)
            return _info(path, warnings)
        problems.append(f"{path.name}: {problem}")
    detail = "; ".join(problems) if problems else "the latest pointer exists but no step-* folder does"
    raise CheckpointError(
        f"{root} holds checkpoints but none is valid ({detail}). Refusing to start over from step 0: "
        "restore a checkpoint folder, or move the run directory aside to start fresh.")


def load_checkpoint(run_dir: str | os.PathLike[str], step: int, *, verify_hashes: bool = True) -> CheckpointInfo:
    """The checkpoint of ``step``, verified against its manifest (e.g. to serve or export an earlier step).

    Raises :class:`CheckpointError` naming the steps on disk when that one is missing (retention may have
    removed it) or damaged.
    """
    root = Path(run_dir) / CHECKPOINTS_DIR
    folder = root / step_dir_name(step)
    if not folder.is_dir():
        steps = sorted(s for s, _ in _step_dirs(root)) if root.is_dir() else []
        have = ", ".join(map(str, steps)) if steps else "none"
        raise CheckpointError(f"{run_dir} has no checkpoint of step {step} (checkpoints on disk: steps {have}; "
                              "retention keeps the latest and the best training.keep_best_k)")
    problem = _verify(folder, verify_hashes)
    if problem is not None:
        raise CheckpointError(f"checkpoint {folder} is damaged: {problem}")
    return _info(folder, [])


def _verify(folder: Path, verify_hashes: bool) -> str | None:
    """None if the manifest matches the folder; otherwise what is wrong."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError("files is not an object")
    except FileNotFoundError:
        return "no MANIFEST.json (the write did not finish)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable MANIFEST.json ({e})"
    if TRAINER_STATE not in files:
        return "MANIFEST.json does not list trainer_state.json"
    for rel, meta in files.items():
        path = folder / rel
        if not isinstance(meta, dict):
            return f"MANIFEST.json entry for {rel!r} is malformed"
        if rel.startswith("/") or ".." in Path(rel).parts:
            return f"MANIFEST.json names a path outside the checkpoint: {rel!r}"
        try:
            size = path.stat().st_size
        except OSError:
            return f"{rel} is missing"
        if size != meta.get("size"):
            return f"{rel} has {size} bytes, the manifest says {meta.get('size')}"
        if verify_hashes and hash_file(path) != meta.get("sha256"):
            return f"{rel} does not match its sha256"
    try:
        json.loads((folder / TRAINER_STATE).read_text())
    except ValueError as e:
        return f"trainer_state.json is not JSON ({e})"
    return None


def _info(folder: Path, warnings: list[str]) -> CheckpointInfo:
    state = json.loads((folder / TRAINER_STATE).read_text())
    return CheckpointInfo(path=folder, step=int(state["step"]), weights=state["weights"], metric=state.get("metric"),
                          trainer_state=dict(state.get("trainer_state") or {}), warnings=warnings)


# -- restoring ---------------------------------------------------------------------


def restore_checkpoint(
    info: CheckpointInfo,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    *,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load weights, optimizer, scheduler and (unless ``restore_rng=False``) every RNG; return the trainer state.

    The returned dict is what the trainer passed to :func:`save_checkpoint`, with ``step`` filled in.
    """
    _load_weights(info, model)
    if optimizer is not None:
        if not (info.path / OPTIMIZER).exists():
            raise CheckpointError(f"{info.path} has no optimizer state")
        optimizer.load_state_dict(torch.load(info.path / OPTIMIZER, map_location="cpu", weights_only=True))
    if scheduler is not None:
        if not (info.path / SCHEDULER).exists():
            raise CheckpointError(f"{info.path} has no scheduler state")
        scheduler.load_state_dict(torch.load(info.path / SCHEDULER, map_location="cpu", weights_only=True))
    if restore_rng:
        _set_rng_state(torch.load(info.path / RNG, map_location="cpu", weights_only=True))
    state = dict(info.trainer_state)
    state.setdefault("step", info.step)
    return state


def _load_weights(info: CheckpointInfo, model: torch.nn.Module) -> None:
    if info.weights == "lora":
        if not _is_peft(model):
            raise CheckpointError(f"{info.path} holds a LoRA adapter; restore it into a peft model")
        _load_adapters(info.path / ADAPTER_DIR, model)
        return
    if _is_peft(model):
        raise CheckpointError(f"{info.path} holds full weights, but the model is a peft (LoRA) model")
    from safetensors.torch import load_file

    saved = load_file(str(info.path / FULL_WEIGHTS), device="cpu")
    targets = dict(model.named_parameters(remove_duplicate=False))
    targets.update(model.named_buffers(remove_duplicate=False))
    unknown = sorted(set(saved) - set(targets))
    missing = sorted(set(_trainable_tensors(model)) - set(saved))
    if unknown or missing:
        raise CheckpointError(f"{info.path} does not fit this model: unknown tensors {unknown[:5]}, "
                              f"trainable tensors not in the checkpoint {missing[:5]}")
    with torch.no_grad():
        for name, tensor in saved.items():
            dst = targets[name]
            if dst.shape != tensor.shape:
                raise CheckpointError(f"{name}: checkpoint shape {tuple(tensor.shape)} != model {tuple(dst.shape)}")
            dst.copy_(tensor)


def _load_adapters(folder: Path, model: torch.nn.Module) -> None:
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    for adapter in model.peft_config:
        sub = folder if adapter == "default" else folder / adapter  # peft's save_pretrained layout
        weights = sub / "adapter_model.safetensors"
        if not weights.exists():
            raise CheckpointError(f"{folder} has no weights for adapter {adapter!r}")
        saved = load_file(str(weights), device="cpu")
        expected = set(get_peft_model_state_dict(model, adapter_name=adapter))
        if set(saved) != expected:
            raise CheckpointError(
                f"adapter {adapter!r} in {folder} does not fit this model (LoRA config changed?): "
                f"unexpected {sorted(set(saved) - expected)[:5]}, missing {sorted(expected - set(saved))[:5]}")
        set_peft_model_state_dict(model, saved, adapter_name=adapter)


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["bit_generator"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            logger.warning("checkpoint has %d CUDA RNG states, this machine %d GPUs: CUDA RNG not restored",
                           len(cuda_states), torch.cuda.device_count())


# -- helpers for tests and resume checks ---------------------------------------------


def params_hash(model: torch.nn.Module) -> str:
    """sha256 over the trainable parameters in name order (name, shape, float32 CPU bytes)."""
    h = hashlib.sha256()
    for name, p in sorted(((n, p) for n, p in model.named_parameters() if p.requires_grad), key=lambda x: x[0]):
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()
