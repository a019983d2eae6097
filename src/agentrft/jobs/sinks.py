"""Metric sinks: a run's step and validation metrics, also as TensorBoard event files or an offline W&B run.

``run.db`` (:class:`~agentrft.jobs.store.RunStore`) is the source of truth; a sink is a copy for the tools
people already look at. Chosen by the config's ``sinks`` section (:class:`~agentrft.config.SinksConfig`)::

    sinks = open_sinks(cfg, run_dir, store, start_step)   # after setup; a sink that cannot start is off
    sinks.write(step, metrics, split="train")             # beside every store.log_metrics of the runner
    sinks.close()                                         # at the end of the run, failed or interrupted too

What it departs from, and why:

* **A sink never fails the run.** Its first error (an unwritable folder, a full disk, a library that
  raises) switches that sink off for the rest of the run with one ``sink_failed`` event in the store; the
  step, its checkpoint and the other sinks go on. A missing package is different: it is a config error,
  raised before the run starts (:func:`check_sinks`), because it is the user's to fix.
* **TensorBoard is written synchronously** with tensorboardX's ``EventsWriter``, not its ``SummaryWriter``:
  the latter writes from a background thread that drops errors, so a full disk would go unnoticed. Each
  start opens a new event file and writes a ``SessionLog.START`` at the first step it will log; TensorBoard
  then hides the events of a resumed run's replayed steps (those after its checkpoint) from the earlier
  file, as tensorboardX's ``purge_step`` does. Readers that ignore session logs see those steps twice.
* **W&B is offline only**: ``WANDB_MODE`` is set to the section's mode for this process, nothing logs in,
  error reporting is off, and git, code and system-metric collection are off. A resumed run appends to the
  same W&B run id in a new ``offline-run-*`` folder; its replayed steps are logged again (``wandb sync``
  uploads both), so the store is what to trust for a resumed run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import time
from pathlib import Path
from typing import Any, Mapping, Protocol

from agentrft.config import JobConfig, SinksConfig, WandbSinkConfig
from agentrft.errors import ConfigError
from agentrft.jobs.store import RunStore

TENSORBOARD_DIR = "tensorboard"
"""Folder of a run directory that holds its TensorBoard event files."""


class MetricSink(Protocol):
    """One destination of metrics. ``write`` and ``close`` may raise: :class:`MetricSinks` contains it."""

    name: str

    def write(self, step: int, metrics: Mapping[str, float], split: str) -> None: ...

    def close(self) -> None: ...


def check_sinks(sinks: SinksConfig) -> None:
    """Refuse, before a run starts, a sink whose package is not installed (:class:`ConfigError`)."""
    needed = [("sinks.tensorboard", "tensorboardX")] if sinks.tensorboard else []
    if sinks.wandb is not None and sinks.wandb.mode == "offline":
        needed.append(("sinks.wandb", "wandb"))
    for key, package in needed:
        if not _installed(package):
            raise ConfigError(f"{key} needs the {package!r} package, which is not installed: pip install {package} "
                              f"(or turn {key} off)")


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


class TensorBoardSink:
    """Scalars as ``SPLIT/NAME`` tags in ``RUN_DIR/tensorboard/events.out.tfevents.*``, flushed each write."""

    name = "tensorboard"

    def __init__(self, logdir: Path, start_step: int) -> None:
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        logdir.mkdir(parents=True, exist_ok=True)
        # a suffix of our own: two starts within one second would otherwise share (and clobber) one file name
        self._writer = EventsWriter(str(logdir / "events"), filename_suffix=f".{os.getpid()}.{time.time_ns()}")
        self._writer.write_event(Event(wall_time=time.time(), step=start_step + 1,
                                       session_log=SessionLog(status=SessionLog.START)))
        self._writer.flush()

    def write(self, step: int, metrics: Mapping[str, float], split: str) -> None:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=f"{split}/{name}", simple_value=float(v)) for name, v in metrics.items()]
        self._writer.write_event(Event(wall_time=time.time(), step=step, summary=Summary(value=values)))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class WandbSink:
    """An offline W&B run: ``<dir>/wandb/offline-run-*/run-<id>.wandb``; metrics as ``SPLIT/NAME`` against
    a ``step`` axis (the run's optimizer step, not W&B's own counter, so validation rows join their step)."""

    name = "wandb"

    def __init__(self, cfg: WandbSinkConfig, run_dir: Path, config: Mapping[str, Any]) -> None:
        os.environ["WANDB_MODE"] = cfg.mode  # no network: a WANDB_MODE=online in the environment does not win
        os.environ["WANDB_ERROR_REPORTING"] = "false"  # W&B otherwise reports its own errors to Sentry
        import wandb

        root = Path(cfg.dir) if cfg.dir else run_dir
        root.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(mode=cfg.mode, disable_git=True, save_code=False, console="off", silent=True,
                                  x_disable_stats=True, x_disable_machine_info=True, reinit="create_new")
        self._run = wandb.init(project=cfg.project, dir=str(root), id=wandb_run_id(run_dir), name=run_dir.name,
                               resume="allow", config=dict(config), settings=settings)
        self._run.define_metric("step")
        self._run.define_metric("*", step_metric="step")

    def write(self, step: int, metrics: Mapping[str, float], split: str) -> None:
        self._run.log({"step": step, **{f"{split}/{name}": float(v) for name, v in metrics.items()}})

    def close(self) -> None:
        self._run.finish()


def wandb_run_id(run_dir: Path) -> str:
    """The W&B id of a run directory: its name, made safe, and a hash of its absolute path (two ``runs/rft``
    in different places are two runs); the same on every resume."""
    where = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_-]', '-', run_dir.name)[:48]}-{where}"


class MetricSinks:
    """The sinks of one run. The first failure of a sink logs one ``sink_failed`` event and switches it off."""

    def __init__(self, store: RunStore, sinks: list[MetricSink] | None = None) -> None:
        self._store = store
        self._sinks: list[MetricSink] = list(sinks or [])

    @property
    def active(self) -> list[str]:
        return [s.name for s in self._sinks]

    def write(self, step: int, metrics: Mapping[str, float], split: str = "train") -> None:
        for sink in list(self._sinks):
            try:
                sink.write(step, metrics, split)
            except Exception as e:  # a sink never fails the run
                self._disable(sink, f"writing step {step}", e, step)

    def close(self) -> None:
        for sink in list(self._sinks):
            try:
                sink.close()
            except Exception as e:
                self._disable(sink, "closing", e, None)
        self._sinks.clear()

    def _disable(self, sink: MetricSink, doing: str, error: Exception, step: int | None) -> None:
        self._sinks.remove(sink)
        _report_failure(self._store, sink.name, doing, error, step)
        if doing != "closing":
            try:
                sink.close()
            except Exception:
                pass  # already reported once; a broken sink's close may fail the same way


def open_sinks(cfg: JobConfig, run_dir: Path, store: RunStore, start_step: int) -> MetricSinks:
    """The sinks ``cfg.sinks`` asks for, started at ``start_step`` (the step the run continues after). One
    that cannot start (an unwritable folder, ...) is reported with a ``sink_failed`` event and left out."""
    wanted: list[tuple[str, Any]] = []
    if cfg.sinks.tensorboard:
        wanted.append(("tensorboard", lambda: TensorBoardSink(run_dir / TENSORBOARD_DIR, start_step)))
    if cfg.sinks.wandb is not None and cfg.sinks.wandb.mode == "offline":
        config = store.written(cfg.model_dump(mode="json"))  # as run.db holds it (docs/privacy.md)
        wanted.append(("wandb", lambda: WandbSink(cfg.sinks.wandb, run_dir, config)))
    started = []
    for name, start in wanted:
        try:
            started.append(start())
        except Exception as e:
            _report_failure(store, name, "starting", e, start_step)
    return MetricSinks(store, started)


def _report_failure(store: RunStore, name: str, doing: str, error: Exception, step: int | None) -> None:
    """The one warning a failed sink leaves: a ``sink_failed`` event in the store."""
    store.log_event("sink_failed", f"metric sink {name!r} switched off: {doing} failed: {type(error).__name__}: "
                                   f"{error}", {"sink": name, "error": f"{type(error).__name__}: {error}"}, step=step)


__all__ = ["MetricSink", "MetricSinks", "TENSORBOARD_DIR", "TensorBoardSink", "WandbSink", "check_sinks",
           "open_sinks", "wandb_run_id"]
