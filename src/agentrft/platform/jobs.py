"""Fine-tuning jobs: create, read, cancel, pause, resume, and the events and checkpoints of their runs.

A job is a row of ``platform.db`` plus a directory ``HOME/jobs/<job-id>/`` holding copies of its data
files (a file deleted after the job was created does not change it), and its run directory ``run/``,
where the worker's :class:`~agentrft.jobs.store.RunStore` keeps metrics, events, trajectories and
checkpoints. The API's events are the platform's own (created, started, paused, ...) merged with the run
store's, and a ``metrics`` event per training step; its checkpoints are the run's, each with its step's
metrics and the name that serves it.

Status strings are OpenAI's (``validating_files``, ``queued``, ``running``, ``succeeded``, ``failed``,
``cancelled``) plus ``paused``.
"""

from __future__ import annotations

import json
import math
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from agentrft.jobs.store import DB_NAME, RunStore, StoreError
from agentrft.platform.db import TERMINAL_STATUSES, PlatformDB
from agentrft.platform.files import FileService
from agentrft.platform.jobspec import checkpoint_name, fine_tuned_name, plan_job
from agentrft.platform.models import ModelCatalog
from agentrft.platform.runs import RunRef
from agentrft.platform.supervisor import Supervisor
from agentrft.serving.protocol import APIError
from agentrft.trust import TrustError

ORGANIZATION = "org-agentrft"
MAX_LIMIT = 100


class JobService:
    def __init__(self, db: PlatformDB, files: FileService, catalog: ModelCatalog, supervisor: Supervisor) -> None:
        self.db, self.files, self.catalog, self.supervisor = db, files, catalog, supervisor

    # -- create ------------------------------------------------------------------------
    def create(self, body: Any, owner: str = "local") -> dict[str, Any]:
        file_rows = {row["id"]: row for row in self.db.list_files()}
        fine_tuned = {j["fine_tuned_model"]: j for j in self.db.jobs_with_status("succeeded")}
        plan = plan_job(body, files=file_rows, base_models=self.catalog.base_models, fine_tuned=fine_tuned,
                        limits=self.files.limits)
        try:
            self.files.limits.check_concurrent_jobs(self.db.active_jobs_of(owner))
        except TrustError as e:
            raise APIError(429, f"{e}; wait for one to finish or cancel one", kind="requests",
                           code="rate_limit_exceeded") from None
        job_id = "ftjob-" + secrets.token_hex(12)
        job_dir = self.db.home / "jobs" / job_id
        job_dir.mkdir(parents=True)
        paths = {"RUN_DIR": str(job_dir / "run"), "TRAINING_FILE": str(job_dir / "training.jsonl")}
        shutil.copyfile(self.files.path(body["training_file"]), paths["TRAINING_FILE"])
        if body.get("validation_file"):
            paths["VALIDATION_FILE"] = str(job_dir / "validation.jsonl")
            shutil.copyfile(self.files.path(body["validation_file"]), paths["VALIDATION_FILE"])
        if body["model"] in fine_tuned:
            paths["PARENT_RUN_DIR"] = fine_tuned[body["model"]]["config"]["out_dir"]
        config = _fill(plan.config, paths)
        (job_dir / "config.json").write_text(json.dumps(config, indent=2))
        self.db.insert_job({
            "id": job_id, "created_at": int(time.time()), "status": "queued", "model": plan.base_model,
            "training_file": body["training_file"], "validation_file": body.get("validation_file"),
            "suffix": body.get("suffix"), "seed": plan.seed, "metadata": body.get("metadata"),
            "method": plan.method, "extension": body.get("agentrft"), "config": config, "owner": owner})
        self.db.add_event(job_id, f"Created fine-tuning job: {job_id}")
        for warning in plan.warnings:
            self.db.add_event(job_id, warning, level="warn")
        self.db.add_event(job_id, "Validated training file: " + body["training_file"])
        self.supervisor.wake()
        return self.retrieve(job_id)

    # -- read --------------------------------------------------------------------------
    def get(self, job_id: str) -> dict[str, Any]:
        job = self.db.get_job(job_id)
        if job is None:
            raise APIError(404, f"Could not find fine-tuning job {job_id}", param="fine_tuning_job_id",
                           code="fine_tuning_job_not_found")
        return job

    def retrieve(self, job_id: str) -> dict[str, Any]:
        return job_object(self.get(job_id))

    def list(self, after: str | None, limit: int) -> dict[str, Any]:
        limit = _limit(limit)
        rows, more = self.db.list_jobs(after, limit)
        return {"object": "list", "data": [job_object(r) for r in rows], "has_more": more}

    def run_ref(self, job_id: str) -> RunRef | None:
        """The job's run for the dashboard (None: no such job, or its run has not started)."""
        job = self.db.get_job(job_id)
        return None if job is None else _ref(job)

    def run_refs(self) -> list[RunRef]:
        rows, _ = self.db.list_jobs(None, 10_000)
        return [ref for job in rows if (ref := _ref(job)) is not None]

    # -- control -----------------------------------------------------------------------
    def cancel(self, job_id: str) -> dict[str, Any]:
        job = self.get(job_id)
        if job["status"] in TERMINAL_STATUSES:
            raise APIError(400, f"Job {job_id} has already {job['status']}; it cannot be cancelled", code="invalid_state")
        def cancel_idle() -> bool:
            if self.db.update_job(job_id, expect=("queued", "paused", "validating_files"), status="cancelled",
                                  finished_at=int(time.time())):
                self.db.add_event(job_id, "The job was cancelled")
                return True
            return False

        self.supervisor.stop_job(job_id, "cancel", cancel_idle)
        return self.retrieve(job_id)

    def pause(self, job_id: str) -> dict[str, Any]:
        job = self.get(job_id)
        if job["status"] not in ("running", "queued"):
            raise APIError(400, f"Job {job_id} is {job['status']}; only a running or queued job can be paused",
                           code="invalid_state")
        def pause_idle() -> bool:
            if self.db.update_job(job_id, expect=("queued",), status="paused"):
                self.db.add_event(job_id, "The job was paused")
                return True
            return False

        self.supervisor.stop_job(job_id, "pause", pause_idle)
        return self.retrieve(job_id)

    def resume(self, job_id: str) -> dict[str, Any]:
        job = self.get(job_id)
        if job["status"] != "paused":
            raise APIError(400, f"Job {job_id} is {job['status']}; only a paused job can be resumed",
                           code="invalid_state")
        if self.db.update_job(job_id, expect=("paused",), status="queued"):
            self.db.add_event(job_id, "The job was resumed; it continues from its latest checkpoint")
        self.supervisor.wake()
        return self.retrieve(job_id)

    # -- events and checkpoints ----------------------------------------------------------
    def events(self, job_id: str, after: str | None, limit: int) -> dict[str, Any]:
        job = self.get(job_id)
        events = [{"id": f"ftevent-p{e['id']}", "created_at": int(e["created_at"]), "level": e["level"],
                   "message": e["message"], "data": e["data"], "type": "message", "_t": e["created_at"]}
                  for e in self.db.events(job_id)]
        store = _store(job)
        if store is not None:
            with store:
                for e in store.events():
                    level = "warn" if e["kind"] in ("nonfinite_skip", "no_signal", "invalid_rows", "config_change") \
                        else "error" if e["kind"] == "status" and "failed" in e["message"] else "info"
                    events.append({"id": f"ftevent-r{e['id']}", "created_at": int(e["time"]), "level": level,
                                   "message": e["message"], "data": e["data"], "type": "message", "_t": e["time"]})
                times: dict[int, float] = {}
                for m in store.metrics(split="train"):
                    times[m["step"]] = max(times.get(m["step"], 0.0), m["time"])
                for step, values in store.metrics_frame("train").items():
                    t = times[step]
                    events.append({"id": f"ftevent-m{step}", "created_at": int(t), "level": "info",
                                   "message": f"Step {step}: " + _summary(values), "type": "metrics",
                                   "data": {"step": step, **_finite(values)}, "_t": t})
        events.sort(key=lambda e: (e["_t"], e["id"]), reverse=True)  # OpenAI lists newest first
        for e in events:
            e["object"] = "fine_tuning.job.event"
            del e["_t"]
        start = 0
        if after is not None:
            ids = [e["id"] for e in events]
            start = ids.index(after) + 1 if after in ids else len(events)
        limit = _limit(limit)
        page = events[start:start + limit]
        return {"object": "list", "data": page, "has_more": start + limit < len(events)}

    def checkpoints(self, job_id: str, after: str | None, limit: int) -> dict[str, Any]:
        job = self.get(job_id)
        name = fine_tuned_name(job["model"], job["suffix"], job["id"])
        data = []
        store = _store(job)
        if store is not None:
            with store:
                frame = store.metrics_frame(None)
                for ckpt in reversed(store.checkpoints()):
                    if not ckpt["exists"]:
                        continue
                    step = ckpt["step"]
                    metrics = {"step": float(step), **_openai_metrics(frame.get(step, {}))}
                    data.append({"id": f"ftckpt-{job_id.removeprefix('ftjob-')}-{step}", "object":
                                 "fine_tuning.job.checkpoint", "created_at": int(ckpt["time"]),
                                 "fine_tuned_model_checkpoint": checkpoint_name(name, step),
                                 "fine_tuning_job_id": job_id, "step_number": step, "metrics": metrics,
                                 "is_best": ckpt["is_best"]})
        start = 0
        if after is not None:
            ids = [c["id"] for c in data]
            start = ids.index(after) + 1 if after in ids else len(data)
        limit = _limit(limit)
        page = data[start:start + limit]
        return {"object": "list", "data": page, "has_more": start + limit < len(data),
                "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None}


def job_object(job: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI ``fine_tuning.job`` object of a job row."""
    method = job["method"]
    hyper = dict((method.get(method["type"]) or {}).get("hyperparameters") or {})
    cfg = job["config"]
    resolved = {"n_epochs": cfg.get("hyperparameters", {}).get("n_epochs", "auto"),
                "batch_size": cfg.get("hyperparameters", {}).get("batch_size", "auto"),
                "learning_rate_multiplier": cfg.get("hyperparameters", {}).get("learning_rate_multiplier", "auto")}
    method_out = {"type": method["type"], method["type"]: {**(method.get(method["type"]) or {}),
                                                          "hyperparameters": {**resolved, **hyper}}}
    return {
        "object": "fine_tuning.job", "id": job["id"], "created_at": job["created_at"], "status": job["status"],
        "model": job["model"], "fine_tuned_model": job["fine_tuned_model"], "finished_at": job["finished_at"],
        "error": job["error"], "hyperparameters": {**resolved, **hyper}, "method": method_out,
        "organization_id": ORGANIZATION, "result_files": [], "seed": job["seed"],
        "trained_tokens": job["trained_tokens"], "training_file": job["training_file"],
        "validation_file": job["validation_file"], "suffix": job["suffix"], "metadata": job["metadata"],
        "estimated_finish": None, "integrations": [], "user_provided_suffix": job["suffix"],
    }


def _fill(cfg: dict[str, Any], paths: dict[str, str]) -> dict[str, Any]:
    text = json.dumps(cfg)
    for name, value in paths.items():
        text = text.replace(json.dumps("{" + name + "}"), json.dumps(value))
    return json.loads(text)


def _ref(job: dict[str, Any]) -> RunRef | None:
    run_dir = Path(job["config"]["out_dir"])
    if not (run_dir / DB_NAME).is_file():
        return None
    name = job["suffix"] or job["fine_tuned_model"] or job["id"]
    return RunRef(id=job["id"], name=name, run_dir=run_dir, status=job["status"], created_at=job["created_at"],
                  method=job["config"]["method"], model=job["model"])


def _store(job: dict[str, Any]) -> RunStore | None:
    run_dir = Path(job["config"]["out_dir"])
    if not (run_dir / DB_NAME).is_file():
        return None
    try:
        return RunStore(run_dir)
    except StoreError:
        return None


def _finite(values: dict[str, float]) -> dict[str, float | None]:
    return {k: (v if isinstance(v, float) and math.isfinite(v) else None) for k, v in values.items()}


def _summary(values: dict[str, float]) -> str:
    keys = [k for k in ("reward_mean", "loss", "accuracy", "tool_calls_per_rollout") if k in values]
    return ", ".join(f"{k} {values[k]:.4g}" for k in keys) or f"{len(values)} metrics"


def _openai_metrics(values: dict[str, float]) -> dict[str, float]:
    """A step's metrics under OpenAI's checkpoint names where one fits, and every metric as ``<split>/<name>``."""
    out: dict[str, float] = {k: v for k, v in _finite(values).items() if v is not None}
    if "train/loss" in out:
        out["train_loss"] = out["train/loss"]
    if "validation/reward_mean" in out:
        out["valid_mean_reward"] = out["validation/reward_mean"]
    return out


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise APIError(400, f"limit must be between 1 and {MAX_LIMIT}", param="limit")
    return limit
