"""One fine-tuning job in its own process: ``python -m agentrft.platform.worker HOME JOB_ID``.

The supervisor (:mod:`agentrft.platform.supervisor`) starts it; it runs the job's config with
:func:`agentrft.train.runner.run_job` under the server's trust policy (``HOME/trust.json``:
:func:`agentrft.trust.trusting`), resuming from the run's latest checkpoint when the run directory already
holds a run (a job resumed after a pause or a server restart). It records the outcome itself:
``succeeded`` (with the fine-tuned model's name) or ``failed`` (with OpenAI's error object). On SIGTERM
(cancel, pause, server shutdown) the runner stops at once with its last checkpoint intact, and the worker
exits without deciding the job's status: the supervisor that asked knows why.

The worker dies with its server (``PR_SET_PDEATHSIG``): a server killed with ``kill -9`` leaves no
training process behind, and the next server resumes the job from its checkpoint.
"""

from __future__ import annotations

import ctypes
import json
import signal
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to send this process SIGKILL when its parent (the server) dies, however it dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: workers then outlive a killed server
        pass


def main(argv: list[str]) -> int:
    home, job_id = Path(argv[0]), argv[1]
    from agentrft.config import load_config
    from agentrft.errors import AgentRFTError
    from agentrft.jobs.store import DB_NAME, RunStore
    from agentrft.platform.db import PlatformDB
    from agentrft.platform.jobspec import fine_tuned_name
    from agentrft.train.runner import RunInterrupted, run_job
    from agentrft.trust import EgressPolicy, JobTrust, McpRegistry, trusting

    db = PlatformDB(home)
    job = db.get_job(job_id)
    if job is None:
        print(f"no job {job_id} in {home}", file=sys.stderr)
        return 2
    trust_file = home / "trust.json"
    raw = json.loads(trust_file.read_text()) if trust_file.is_file() else {}
    trust = JobTrust(egress=EgressPolicy(**raw.get("egress", {})), mcp_registry=McpRegistry(**raw.get("mcp", {})))
    run_dir = Path(job["config"]["out_dir"])
    resume = (run_dir / DB_NAME).is_file() and _has_run(run_dir)
    db.add_event(job_id, f"worker {_pid()} {'resumed the run from its latest checkpoint' if resume else 'started'}"
                         f" (attempt {job['attempts']})")
    try:
        cfg = load_config(job["config"])
        with trusting(trust):
            result = run_job(cfg, resume=resume, log=lambda line: print(line, flush=True))
    except RunInterrupted as e:
        print(f"run {e}", flush=True)
        return 128 + e.signum
    except AgentRFTError as e:
        _fail(db, job_id, "job_failed", str(e))
        return 1
    except Exception as e:  # a bug or a resource failure: recorded, never a silent 'running'
        _fail(db, job_id, "internal_error", f"{type(e).__name__}: {e}")
        raise
    if result.status == "stopped":  # a live monitor stopped the run (monitors.action: stop): not a success
        _fail(db, job_id, "monitor_stopped", result.warning or "a live monitor stopped the run")
        return 1
    with RunStore(run_dir) as store:
        tokens = sum(int(m["value"]) for m in store.metrics(name="tokens_trained", split="train")
                     if m["value"] == m["value"])
    name = fine_tuned_name(job["model"], job["suffix"], job_id)
    db.update_job(job_id, expect=("running",), status="succeeded", fine_tuned_model=name,
                  finished_at=int(time.time()), trained_tokens=tokens or None)
    db.add_event(job_id, f"The job has successfully completed: {result.steps} steps, run status {result.status}"
                         + (f" ({result.warning})" if result.warning else ""),
                 data={"final_eval": {k: v for k, v in (result.final_eval or {}).items()
                                      if isinstance(v, (int, float))}})
    return 0


def _has_run(run_dir: Path) -> bool:
    from agentrft.jobs.store import RunStore, StoreError

    try:
        with RunStore(run_dir) as store:
            return store.get_run() is not None
    except StoreError:
        return True  # damaged: the resume path says what is wrong with it


def _fail(db, job_id: str, code: str, message: str) -> None:
    db.update_job(job_id, expect=("running",), status="failed", finished_at=int(time.time()),
                  error={"code": code, "message": message, "param": None})
    db.add_event(job_id, f"The job failed: {message}", level="error")


def _pid() -> int:
    import os

    return os.getpid()


if __name__ == "__main__":
    die_with_parent()
    sys.exit(main(sys.argv[1:]))
