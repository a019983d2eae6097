"""Reading runs back: what ``agentrft runs list | show | compare`` print, as plain data.

Everything here reads a run directory's store (:mod:`agentrft.jobs.store`) and
returns JSON-ready dicts and lists, so the CLI, a notebook and the job API see
the same figures; formatting is the caller's. Nothing here imports torch or
loads a model (except :func:`run_tokenizer`, which loads only a tokenizer), so
listing a folder of runs takes well under a second.

Conventions:

* per-step rows merge a step's training metrics (``reward_mean``, ``loss``, ...)
  with the metrics of the eval that ran at that step, prefixed
  :data:`VAL` (``val/reward_mean``);
* a NaN metric (a skipped step's loss) stays NaN here; :func:`json_ready`
  turns it into ``null`` for JSON output;
* the config diff of :func:`compare_runs` leaves out :data:`RUN_IDENTITY_KEYS`
  (``out_dir`` differs between any two runs and says nothing about training).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from agentrft.errors import ModelNotFoundError
from agentrft.jobs.store import DB_NAME, FINISHED_STATUSES, RunStore, StoreError

__all__ = ["LINEAGE_KEYS", "VAL", "compare_runs", "config_diff", "find_runs", "flatten_config", "json_ready",
           "open_run", "run_details", "run_overview", "run_tokenizer", "step_rows", "stored_trajectory"]

VAL = "val/"
"""Prefix of an eval's metrics in the merged per-step rows."""

LINEAGE_KEYS = ("dataset", "grader", "base_model", "config")
"""The hashes that identify what a run was trained on (recorded by the runner in ``runs.hashes``)."""

RUN_IDENTITY_KEYS = frozenset({"out_dir"})

SUMMARY_KEYS = ("method", "model", "init_from", "chat_format", "seed", "data.env", "data.train_file",
                "data.eval_file", "data.limit_train", "data.limit_eval", "lora.enabled", "lora.r",
                "optim.learning_rate", "optim.warmup_steps", "optim.micro_batch_size", "training.max_steps",
                "training.n_epochs", "training.batch_size", "training.eval_interval", "training.eval_samples",
                "training.checkpoint_interval", "training.device", "rollout.temperature", "rollout.top_p",
                "rollout.max_turns", "rollout.max_new_tokens", "rollout.max_total_tokens")
"""Config keys :func:`run_details` summarises (the full config is there too), plus the method's own section."""

METHOD_KEYS = {"rft": ("rft.group_size", "rft.advantage", "rft.loss", "rft.beta", "rft.filter_zero_variance",
                       "rft.resample_rounds"),
               "dpo": ("dpo.beta", "data.pairs_from_run")}


# -- opening --------------------------------------------------------------------------


def find_runs(root: str | os.PathLike[str]) -> list[Path]:
    """Run directories (holding ``run.db``) directly under ``root``, and ``root`` itself if it is one."""
    root = Path(root).expanduser()
    found = [root] if (root / DB_NAME).is_file() else []
    if root.is_dir():
        found += sorted(p for p in root.iterdir() if p.is_dir() and (p / DB_NAME).is_file())
    return found


def open_run(run_dir: str | os.PathLike[str]) -> RunStore:
    """The store of an existing run directory; never creates one (``RunStore`` alone would)."""
    run_dir = Path(run_dir).expanduser()
    if not (run_dir / DB_NAME).is_file():
        why = "does not exist" if not run_dir.exists() else f"has no {DB_NAME}"
        raise StoreError(f"{run_dir} is not a run directory: it {why} (`agentrft runs list` shows the runs)")
    return RunStore(run_dir)


# -- one run ----------------------------------------------------------------------------


def step_rows(store: RunStore) -> list[dict[str, Any]]:
    """One row per step: ``{"step": n, <train metrics>, "val/<name>": <eval metrics at n>}``, by step."""
    train, val = store.metrics_frame("train"), store.metrics_frame("validation")
    rows = []
    for step in sorted(set(train) | set(val)):
        row: dict[str, Any] = {"step": step, **train.get(step, {})}
        row.update({VAL + k: v for k, v in val.get(step, {}).items()})
        rows.append(row)
    return rows


def _last(rows: list[dict[str, Any]], key: str) -> Any:
    return next((r[key] for r in reversed(rows) if key in r), None)


def _total_steps(config: dict[str, Any], steps_done: int, status: str) -> int | None:
    """The run's planned steps: ``training.max_steps``; else, once completed, the steps it ran (epochs of a
    dataset whose size the store does not record); else unknown."""
    max_steps = (config.get("training") or {}).get("max_steps")
    if max_steps:
        return int(max_steps)
    return steps_done if status in FINISHED_STATUSES else None


def _overview(run_dir: Path, run: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    config = run["resolved_config"]
    train_steps = [r["step"] for r in rows if any(not k.startswith(VAL) and k != "step" for k in r)]
    steps_done = max(train_steps, default=0)
    return {
        "id": run["run_id"], "path": str(run_dir), "method": run["method"], "model": config.get("model"),
        "status": run["status"], "message": run["message"], "steps_done": steps_done,
        "total_steps": _total_steps(config, steps_done, run["status"]),
        "reward": _last(rows, "reward_mean"), "accuracy": _last(rows, "accuracy"),
        "val_reward": _last(rows, VAL + "reward_mean"), "val_accuracy": _last(rows, VAL + "accuracy"),
        "created_at": run["created_at"], "updated_at": run["updated_at"], "error": None,
    }


def run_overview(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """One line's worth: id, method, model, status, steps done / total, last reward and accuracy (training
    and eval), times. A store that cannot be read gives ``status: unreadable`` and ``error``, not an exception,
    so one damaged run never hides the others in a listing."""
    run_dir = Path(run_dir).expanduser()
    try:
        with open_run(run_dir) as store:
            run = store.get_run()
            if run is None:
                raise StoreError("no run record (the run never got past its start)")
            return _overview(run_dir, run, step_rows(store))
    except StoreError as e:
        return {"id": run_dir.name, "path": str(run_dir), "method": None, "model": None, "status": "unreadable",
                "message": None, "steps_done": 0, "total_steps": None, "reward": None, "accuracy": None,
                "val_reward": None, "val_accuracy": None, "created_at": None, "updated_at": None, "error": str(e)}


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"learning_rate": 0.01}}`` -> ``{"optim.learning_rate": 0.01}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten_config(value, name + "."))
        else:
            out[name] = value
    return out


def _config_summary(config: dict[str, Any], method: str) -> dict[str, Any]:
    flat = flatten_config(config)
    keys = SUMMARY_KEYS + METHOD_KEYS.get(method, ())
    summary = {k: flat[k] for k in keys if flat.get(k) is not None}
    if config.get("grader") is not None:
        grader = config["grader"]
        summary["grader"] = grader.get("name", grader.get("type")) if isinstance(grader, dict) else grader
    return summary


def _last_error(run: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The message of the last failure or stop, even when a resume has since set the run running again."""
    if run["status"] in ("failed", "stopped") and run["message"]:
        return {"status": run["status"], "message": run["message"], "time": run["updated_at"]}
    for e in reversed(events):
        status = (e.get("data") or {}).get("status")
        if e["kind"] == "status" and status in ("failed", "stopped"):
            return {"status": status, "message": e["message"], "time": e["time"]}
    return None


def _checkpoints(store: RunStore, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Recorded checkpoints with the eval metrics of their step (the eval that ran just before the save)."""
    by_step = {r["step"]: r for r in rows}
    out = []
    for c in store.checkpoints():
        row = by_step.get(c["step"], {})
        c["eval"] = {k[len(VAL):]: v for k, v in row.items() if k.startswith(VAL)}
        out.append(c)
    return out


def run_details(run_dir: str | os.PathLike[str], events: int | None = None) -> dict[str, Any]:
    """Everything ``runs show`` prints: the overview, the config (whole and summarised), the lineage hashes,
    per-step rows (:func:`step_rows`), checkpoints with their eval metrics, events (the last ``events`` of
    them; ``None``: all) and the last error."""
    run_dir = Path(run_dir).expanduser()
    with open_run(run_dir) as store:
        run = store.get_run()
        if run is None:
            raise StoreError(f"{run_dir / DB_NAME} holds no run record (the run never got past its start)")
        rows = step_rows(store)
        all_events = store.events()
        details = _overview(run_dir, run, rows)
        details.update(
            config=run["resolved_config"], config_summary=_config_summary(run["resolved_config"], run["method"]),
            hashes=run["hashes"], steps=rows, checkpoints=_checkpoints(store, rows),
            events=all_events[-events:] if events else all_events, events_total=len(all_events),
            last_error=_last_error(run, all_events))
    return details


# -- two runs -----------------------------------------------------------------------------


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """The dotted config keys whose values differ: ``[{"key", "old" (a's), "new" (b's)}]``, sorted by key;
    a key only one config has counts (the other side is ``None``)."""
    fa, fb = flatten_config(a), flatten_config(b)
    return [{"key": k, "old": fa.get(k), "new": fb.get(k)} for k in sorted(set(fa) | set(fb))
            if k not in RUN_IDENTITY_KEYS and fa.get(k) != fb.get(k)]


def compare_runs(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> dict[str, Any]:
    """Two runs side by side: per-step rows (``{"step", "a": row, "b": row}``; a side is ``{}`` where its run
    has no such step), both overviews, whether their lineage hashes agree, and the config diff (a -> b)."""
    da, db = run_details(a), run_details(b)
    ra, rb = {r["step"]: r for r in da["steps"]}, {r["step"]: r for r in db["steps"]}
    steps = [{"step": s, "a": ra.get(s, {}), "b": rb.get(s, {})} for s in sorted(set(ra) | set(rb))]
    lineage = {k: {"a": da["hashes"].get(k), "b": db["hashes"].get(k),
                   "same": da["hashes"].get(k) == db["hashes"].get(k)} for k in LINEAGE_KEYS}
    overview = lambda d: {k: d[k] for k in ("id", "path", "method", "model", "status", "steps_done",  # noqa: E731
                                            "total_steps", "reward", "accuracy", "val_reward", "val_accuracy")}
    return {"a": overview(da), "b": overview(db), "steps": steps, "lineage": lineage,
            "config_diff": config_diff(da["config"], db["config"])}


# -- stored trajectories --------------------------------------------------------------------


def stored_trajectory(run_dir: str | os.PathLike[str], index: int, step: int | None = None,
                      split: str = "train") -> tuple[dict[str, Any], int]:
    """The ``index``-th stored trajectory record of ``split`` (of one ``step``, or of the whole run, in
    logging order) and how many there are to choose from."""
    with open_run(run_dir) as store:
        records = store.trajectories(step=step, split=split)
    where = f"{split} trajectories" + (f" of step {step}" if step is not None else "")
    if not records:
        raise StoreError(f"{run_dir} has no stored {where}")
    if not 0 <= index < len(records):
        raise StoreError(f"trajectory {index} out of range: {run_dir} has {len(records)} {where} "
                         f"(0..{len(records) - 1})")
    return records[index], len(records)


def run_tokenizer(run_dir: str | os.PathLike[str], model: str | None = None):
    """The tokenizer of the run's base model (``model`` overrides it), without loading any weights."""
    from agentrft.models.loading import load_tokenizer

    if model is None:
        with open_run(run_dir) as store:
            run = store.get_run()
        model = (run or {}).get("resolved_config", {}).get("model")
    try:
        return load_tokenizer(model)
    except (ModelNotFoundError, OSError, ValueError) as e:
        raise ModelNotFoundError(f"cannot load the tokenizer of {run_dir}'s model {model!r} to decode its tokens "
                                 f"({e}); name one that has it with --tokenizer") from None


def json_ready(obj: Any) -> Any:
    """``obj`` with NaN and infinities as ``None`` and paths as strings: strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
