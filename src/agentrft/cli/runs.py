"""``agentrft runs list | show | compare | plot``: look at runs and compare them without SQL.

The figures come from :mod:`agentrft.jobs.inspect` (plain data, also the
``--json`` output) and the plot from :mod:`agentrft.jobs.plot`; this module
only lays them out as tables. ``runs show RUN --trajectory N`` prints a stored
trajectory the way ``agentrft rollout`` prints a fresh one
(:func:`~agentrft.cli.measure.render_token_kinds`), decoded with the run's own
tokenizer (loaded alone: no weights).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from typing import Any

import click

from agentrft.cli.common import fail
from agentrft.errors import AgentRFTError
from agentrft.jobs.inspect import VAL

# (metric key in a step row, column label, format): the per-step table of `runs show`, in this order
STEP_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("reward_mean", "reward", "{:.3f}"),
    ("accuracy", "acc", "{:.1%}"),
    ("tool_calls_per_rollout", "calls", "{:.2f}"),
    ("loss", "loss", "{:.4f}"),
    ("grad_norm", "grad norm", "{:.3f}"),
    ("zero_variance_groups", "zero-var", "{:.0f}"),
    ("step_time_s", "step s", "{:.1f}"),
    (VAL + "reward_mean", "val reward", "{:.3f}"),
    (VAL + "accuracy", "val acc", "{:.1%}"),
    (VAL + "tool_calls_per_rollout", "val calls", "{:.2f}"),
)
LABELS = {key: (label, fmt) for key, label, fmt in STEP_COLUMNS}
COMPARE_DEFAULT = ("reward_mean", "accuracy", VAL + "reward_mean", VAL + "accuracy")


def _cell(value: Any, fmt: str = "{:.4g}") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return fmt.format(value)
    return str(value)


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _table(headers: list[str], rows: list[list[str]], left: int = 1) -> None:
    """Columns padded to their widest cell; the first ``left`` columns left-aligned, the rest right-aligned."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    for line in [headers, *rows]:
        cells = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))]
        click.echo("  ".join(cells).rstrip())


def _print_json(obj: Any) -> None:
    from agentrft.jobs.inspect import json_ready

    click.echo(json.dumps(json_ready(obj), indent=2, ensure_ascii=False))


def _steps_text(o: dict[str, Any]) -> str:
    return f"{o['steps_done']}/{o['total_steps'] if o['total_steps'] is not None else '?'}"


def _short_model(model: str | None, width: int = 28) -> str:
    """A model folder by its last component (the full path is in `runs show` and --json)."""
    text = str(model or "-").rstrip("/").rsplit("/", 1)[-1]
    return text if len(text) <= width else text[: width - 1] + "…"


@click.group("runs")
def runs() -> None:
    """Look at training runs and compare them (reads each run directory's run.db)."""


@runs.command("list")
@click.argument("root", default="runs", required=False, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def list_cmd(root: str, as_json: bool) -> None:
    """The runs under ROOT (default runs/): every folder holding a run.db, oldest first."""
    from agentrft.jobs.inspect import find_runs, run_overview

    rows = sorted((run_overview(d) for d in find_runs(root)), key=lambda o: (o["created_at"] or 0, o["path"]))
    if as_json:
        _print_json(rows)
        return
    if not rows:
        click.echo(f"no runs under {root} (a run directory holds run.db; `agentrft train` writes one)")
        return
    _table(["RUN", "METHOD", "MODEL", "STATUS", "STEPS", "REWARD", "ACC", "VAL REWARD", "VAL ACC", "CREATED"],
           [[o["id"], o["method"] or "-", _short_model(o["model"]), o["status"], _steps_text(o),
             _cell(o["reward"], "{:.3f}"), _cell(o["accuracy"], "{:.1%}"), _cell(o["val_reward"], "{:.3f}"),
             _cell(o["val_accuracy"], "{:.1%}"), _when(o["created_at"])] for o in rows], left=4)
    for o in rows:
        if o["error"]:
            click.secho(f"{o['path']}: {o['error']}", fg="yellow", err=True)


def _step_table(rows: list[dict[str, Any]]) -> None:
    columns = [(k, label, fmt) for k, label, fmt in STEP_COLUMNS if any(k in r for r in rows)]
    _table(["step", *(label for _, label, _ in columns)],
           [[str(r["step"]), *(_cell(r.get(k), fmt) for k, _, fmt in columns)] for r in rows])


def _show(d: dict[str, Any]) -> None:
    click.echo(f"run {d['id']}  ({d['path']})")
    click.echo(f"  {d['method']} on {d['model']}, {d['status']}"
               + (f": {d['message']}" if d["message"] else "")
               + f"; steps {_steps_text(d)}; created {_when(d['created_at'])}, updated {_when(d['updated_at'])}")
    click.echo("config (summary; --json has all of it):")
    width = max((len(k) for k in d["config_summary"]), default=0)
    for key, value in d["config_summary"].items():
        click.echo(f"  {key.ljust(width)}  {value}")
    click.echo("lineage:")
    for key, value in d["hashes"].items():
        click.echo(f"  {key.ljust(12)}  {value}")
    click.echo("steps:" if d["steps"] else "steps: none recorded yet")
    if d["steps"]:
        _step_table(d["steps"])
    click.echo("checkpoints:" if d["checkpoints"] else "checkpoints: none")
    if d["checkpoints"]:
        _table(["step", "eval reward", "eval acc", "best", "on disk", "path"],
               [[str(c["step"]), _cell(c["eval"].get("reward_mean"), "{:.3f}"),
                 _cell(c["eval"].get("accuracy"), "{:.1%}"), "yes" if c["is_best"] else "",
                 "yes" if c["exists"] else "no (retention)", c["path"]] for c in d["checkpoints"]], left=1)
    shown = len(d["events"])
    click.echo(f"events ({shown} of {d['events_total']}):" if shown < d["events_total"] else "events:")
    for e in d["events"]:
        step = f" step {e['step']}" if e["step"] is not None and not e["message"].startswith("step ") else ""
        click.echo(f"  {_when(e['time'])}  {e['kind']}{step}: {e['message']}")
    err = d["last_error"]
    click.echo(f"last error: {err['status']} at {_when(err['time'])}: {err['message']}" if err else "last error: none")


def _trajectory_record(record: dict[str, Any]):
    from agentrft.types import Trajectory

    names = {f.name for f in dataclasses.fields(Trajectory)}
    return Trajectory.from_dict({k: v for k, v in record.items() if k in names})


def _show_trajectory(run: str, index: int, step: int | None, split: str, tokenizer: str | None,
                     as_json: bool) -> None:
    from agentrft.cli.measure import render_token_kinds
    from agentrft.jobs.inspect import open_run, run_tokenizer, stored_trajectory
    from agentrft.models.chat_format import get_chat_format

    record, total = stored_trajectory(run, index, step=step, split=split)
    if as_json:
        _print_json(record)
        return
    traj = _trajectory_record(record)
    from agentrft.privacy import stored_privacy

    if stored_privacy(record) != "full":  # no token ids were written: show the messages that were
        click.echo(f"trajectory {index} of {total} ({split}, step {record['step']}, task {record.get('task_id')}; "
                   f"stored with privacy.store: {stored_privacy(record)}, without tokens)")
        for m in traj.messages:
            click.echo(f"{m.get('role')}: {m.get('content') or ''}")
        return
    with open_run(run) as store:
        chat_format = ((store.get_run() or {}).get("resolved_config") or {}).get("chat_format", "auto")
    cf = get_chat_format(run_tokenizer(run, tokenizer), chat_format)
    click.echo(f"trajectory {index} of {total} ({split}, step {record['step']}, task {record.get('task_id')}, "
               f"group {record.get('group_index')})")
    click.echo(render_token_kinds(traj, cf.decode, color=sys.stdout.isatty()))
    click.echo("")
    for r in traj.tool_calls:
        status = "ok" if r.error is None else f"ERROR {r.error.kind.value}"
        click.echo(f"tool call turn {r.turn}: {r.call.name}({json.dumps(r.call.arguments)}) -> {status} in "
                   f"{r.latency_s * 1000:.1f} ms")
    grade = record.get("grade") or {}
    messages = (grade.get("metadata") or {}).get("error_messages") or []
    click.echo(f"stop: {traj.stop_reason.value if traj.stop_reason else None}  turns: {traj.turns}  tokens: "
               f"{traj.num_tokens} (sampled {traj.num_sampled_tokens})  reward: {_cell(record.get('reward'), '{:.3f}')}"
               f"  trace_id: {traj.trace_id}")
    for m in messages:
        click.echo(f"grader: {m}")


@runs.command("show")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--trajectory", "index", type=int, default=None,
              help="Print stored trajectory N (in logging order) token by token instead, as `agentrft rollout` does.")
@click.option("--step", type=int, default=None, help="With --trajectory: count within this step's trajectories.")
@click.option("--split", type=click.Choice(["train", "validation"]), default="train", show_default=True,
              help="With --trajectory: training samples or the rollouts of the evals.")
@click.option("--tokenizer", default=None,
              help="With --trajectory: decode with this model's tokenizer instead of the run's base model's.")
@click.option("--events", "n_events", type=int, default=20, show_default=True,
              help="Show the last N events (0: all).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the whole config, every event).")
def show_cmd(run: str, index: int | None, step: int | None, split: str, tokenizer: str | None, n_events: int,
             as_json: bool) -> None:
    """A run: config summary, lineage hashes, per-step metrics, checkpoints, events, last error."""
    from agentrft.jobs.inspect import run_details

    try:
        if index is not None:
            _show_trajectory(run, index, step, split, tokenizer, as_json)
            return
        details = run_details(run, events=None if as_json else (n_events or None))
    except AgentRFTError as e:
        fail(e)
    if as_json:
        _print_json(details)
    else:
        _show(details)


def _compare(c: dict[str, Any], metrics: tuple[str, ...], last_only: bool) -> None:
    a, b = c["a"], c["b"]
    name_a, name_b = ("A", "B")
    for tag, o in ((name_a, a), (name_b, b)):
        click.echo(f"{tag}: {o['id']}  ({o['method']}, {o['status']}, steps {_steps_text(o)})  {o['path']}")
    click.echo("lineage: " + ", ".join(f"{k} {'same' if v['same'] else 'differs'}" for k, v in c["lineage"].items()))
    if not last_only and c["steps"]:
        header, rows = ["step"], []
        for m in metrics:
            label = LABELS.get(m, (m, ""))[0]
            header += [f"{label} A", f"{label} B"]
        for s in c["steps"]:
            rows.append([str(s["step"]), *(_cell(s[side].get(m), LABELS.get(m, ("", "{:.4g}"))[1])
                                           for m in metrics for side in ("a", "b"))])
        click.echo("")
        _table(header, rows)
    click.echo("")
    click.echo("last values:")
    last = lambda side, key: next((s[side][key] for s in reversed(c["steps"]) if key in s[side]), None)  # noqa: E731
    keys = [k for k, _, _ in STEP_COLUMNS if last("a", k) is not None or last("b", k) is not None]
    _table(["", "A", "B"], [[LABELS[k][0], _cell(last("a", k), LABELS[k][1]), _cell(last("b", k), LABELS[k][1])]
                            for k in keys])
    diff = c["config_diff"]
    click.echo("")
    click.echo(f"config: {len(diff)} key{'s' if len(diff) != 1 else ''} differ{'s' if len(diff) == 1 else ''} (A -> B)"
               if diff else "config: identical (out_dir aside)")
    for d in diff:
        click.echo(f"  {d['key']}: {json.dumps(d['old'])} -> {json.dumps(d['new'])}")


@runs.command("compare")
@click.argument("run_a", type=click.Path(file_okay=False))
@click.argument("run_b", type=click.Path(file_okay=False))
@click.option("--metric", "metrics", multiple=True,
              help="Per-step column (repeatable): a metric name as stored, val/NAME for the evals' "
                   f"[default: {', '.join(COMPARE_DEFAULT)}].")
@click.option("--last", "last_only", is_flag=True, help="Only the last values and the config diff.")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: both overviews, per-step rows, lineage, config diff.")
def compare_cmd(run_a: str, run_b: str, metrics: tuple[str, ...], last_only: bool, as_json: bool) -> None:
    """Two runs side by side: metrics per step, the last values, and the config keys that differ."""
    from agentrft.jobs.inspect import compare_runs

    try:
        comparison = compare_runs(run_a, run_b)
    except AgentRFTError as e:
        fail(e)
    if as_json:
        _print_json(comparison)
    else:
        _compare(comparison, metrics or COMPARE_DEFAULT, last_only)


@runs.command("plot")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="PNG to write [default: RUN/metrics.png].")
def plot_cmd(run: str, out: str | None) -> None:
    """Write a PNG of the run's reward, accuracy and tool-call curves (training per step, validation evals)."""
    from agentrft.jobs.plot import write_run_plot

    try:
        path = write_run_plot(run, out)
    except AgentRFTError as e:
        fail(e)
    click.echo(f"wrote {path}")
