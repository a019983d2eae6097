"""A run's curves as one PNG beside it: reward, accuracy and tool calls, training and validation.

``agentrft runs plot RUN`` writes it on demand and the runner writes it when a
job ends (:func:`plot_finished_run`), so ``RUN_DIR/metrics.png`` is there to
glance at without a dashboard. Three panels share the step axis; each draws the
per-step training figure (``reward_mean``, ``accuracy``,
``tool_calls_per_rollout`` of the sampled groups) as a line and the periodic
evals on the validation rows as markers. A method that logs no such training
figure (SFT, DPO) still gets its eval points.

matplotlib is drawn through its object API on the Agg canvas
(``matplotlib.figure.Figure``), never ``pyplot``: no global backend is
switched, no GUI is touched, and a notebook that imports agentrft keeps its
own backend. The file is written to a temporary name and renamed, so a reader
never sees half a PNG. A plot is a convenience: :func:`plot_finished_run`
never raises, and a missing matplotlib is one log line.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Callable

from agentrft.errors import AgentRFTError
from agentrft.jobs.inspect import VAL, open_run, step_rows

__all__ = ["PLOT_NAME", "PANELS", "PlotUnavailable", "plot_finished_run", "run_plot_figure", "write_run_plot"]

PLOT_NAME = "metrics.png"
"""The plot's file name inside the run directory."""

PANELS: tuple[tuple[str, str], ...] = (
    ("reward_mean", "mean reward"),
    ("accuracy", "accuracy"),
    ("tool_calls_per_rollout", "tool calls / rollout"),
)
"""(metric name, axis label), one panel each, top to bottom."""

INSTALL_HINT = "matplotlib is not installed; `pip install matplotlib` (a dependency of agentrft) to plot runs"


class PlotUnavailable(AgentRFTError):
    """The plot cannot be drawn here (matplotlib missing)."""


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in rows if key in r]
    return [s for s, _ in points], [v for _, v in points]


def run_plot_figure(run_dir: str | os.PathLike[str]):
    """The run's curves as a matplotlib ``Figure`` (one axis per :data:`PANELS` entry)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise PlotUnavailable(INSTALL_HINT) from None

    with open_run(run_dir) as store:
        run = store.get_run() or {}
        rows = step_rows(store)
    fig = Figure(figsize=(8, 7.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(PANELS), 1, sharex=True)
    for ax, (key, label) in zip(axes, PANELS):
        steps, values = _series(rows, key)
        if steps:
            ax.plot(steps, values, color="tab:blue", linewidth=1.4, marker="." if len(steps) <= 50 else None,
                    label="train (sampled groups)")
        steps, values = _series(rows, VAL + key)
        if steps:
            ax.plot(steps, values, color="tab:orange", marker="o", linewidth=1.0, label="validation eval")
        if not ax.lines:
            ax.text(0.5, 0.5, "not recorded", transform=ax.transAxes, ha="center", va="center", color="gray")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if key == "accuracy":
            ax.set_ylim(-0.05, 1.05)
        elif key == "tool_calls_per_rollout":
            top = max(1.0, ax.get_ylim()[1])  # a run without tool calls still shows a readable 0..1 scale
            ax.set_ylim(-0.04 * top, top)
    axes[-1].set_xlabel("step")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    handles = {line.get_label(): line for ax in axes for line in ax.lines}
    if handles:
        axes[0].legend(handles.values(), handles.keys(), loc="best", fontsize="small")
    config = run.get("resolved_config") or {}
    model = str(config.get("model", "?")).rstrip("/").rsplit("/", 1)[-1]  # a folder by its name
    fig.suptitle(f"{run.get('run_id', Path(run_dir).name)}: {run.get('method', '?')} on {model}"
                 f" ({run.get('status', '?')})", fontsize="medium")
    return fig


def write_run_plot(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Draw :func:`run_plot_figure` to ``out`` (default ``RUN_DIR/metrics.png``), atomically; returns the path.
    Raises :class:`PlotUnavailable` without matplotlib, ``StoreError`` for a directory that is not a run."""
    fig = run_plot_figure(run_dir)
    out = Path(out) if out is not None else Path(run_dir).expanduser() / PLOT_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"  # open(): the umask's mode
    try:
        with open(tmp, "xb") as f:
            fig.savefig(f, format="png")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def plot_finished_run(run_dir: str | os.PathLike[str], log: Callable[[str], None] = print) -> Path | None:
    """:func:`write_run_plot` for the runner at the end of a job: never raises (a plot is not worth failing a
    run over); says where the plot went, or in one line why there is none."""
    try:
        path = write_run_plot(run_dir)
    except Exception as e:  # matplotlib missing, a full disk, a font problem: the run itself is fine
        log(f"plot skipped: {e}")
        return None
    log(f"plot: {path}")
    return path
