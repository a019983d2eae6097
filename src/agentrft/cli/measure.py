"""Measure first: ``agentrft models | envs | tasks | eval | rollout``.

``eval`` and ``rollout`` take their rollout settings from options generated
from :class:`~agentrft.config.RolloutConfig` (:mod:`agentrft.cli.common`), with
the defaults of a default training run's periodic eval, so their figures line
up with a run's eval curve.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from agentrft.cli.common import EVAL_DEFAULTS, MODEL_HELP, chat_format_option, fail, pop_rollout_config, \
    rollout_options, sampler_and_format
from agentrft.config import RolloutConfig
from agentrft.errors import AgentRFTError
from agentrft.evaluation import EVAL_BATCH_SIZE


@click.command("models")
def models_cmd() -> None:
    """List the bundled model names (any local Hugging Face model folder works too)."""
    from agentrft.models.loading import available_models

    for name in available_models():
        click.echo(name)


@click.command("envs")
def envs_cmd() -> None:
    """List the built-in environments."""
    from agentrft.envs.registry import available_envs

    for name in available_envs():
        click.echo(name)


@click.command("tasks")
@click.option("--env", "env_name", default="finance", show_default=True)
@click.option("--split", default="validation", show_default=True)
@click.option("--limit", type=int, default=None)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write JSONL here (default: stdout).")
def tasks_cmd(env_name: str, split: str, limit: int | None, out: str | None) -> None:
    """Export an environment's tasks as JSONL in OpenAI's RFT dataset format."""
    from agentrft.datasets import write_jsonl
    from agentrft.envs.registry import task_source

    try:
        rows = task_source(env_name, split).rows
    except AgentRFTError as e:
        fail(e)
    rows = rows[:limit] if limit else rows
    if out:
        write_jsonl(out, rows)
        click.echo(f"wrote {len(rows)} tasks to {out}")
    else:
        for row in rows:
            click.echo(json.dumps(row, ensure_ascii=False))


def task_options(f):
    """Which model rolls out on which tasks: shared by ``eval`` and ``rollout``."""
    for option in reversed([
        click.option("--model", default="smollm2-135m", show_default=True, help=MODEL_HELP),
        click.option("--env", "env_name", default=None,
                     help="Built-in environment (default: finance; with --data, none: the rows' own tools)."),
        click.option("--split", default="validation", show_default=True),
        chat_format_option,
    ]):
        f = option(f)
    return f


def data_options(f):
    """Your own tasks, tools and grader: shared by ``eval`` and ``rollout``."""
    for option in reversed([
        click.option("--data", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="JSONL task file (OpenAI RFT format) instead of a built-in split; without --env its rows "
                          "run with their own tools only (needs --grader)."),
        click.option("--tools", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="tools.yaml: HTTP tool endpoints (Agent RFT wire format) and MCP servers for --data tasks."),
        click.option("--grader", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="Grader spec (OpenAI JSON) to score with."),
    ]):
        f = option(f)
    return f


def run_eval(model: str, env_name: str | None, split: str, limit: int | None, samples: int, out: str, batch_size: int,
             rollout: RolloutConfig, chat_format: str, data: str | None = None, tools: str | None = None,
             grader: str | None = None, quiet: bool = False, privacy: str = "full") -> dict:
    """Roll out, grade and summarise; writes ``summary.json`` and ``trajectories.jsonl`` to ``out`` (as
    ``privacy`` says: ``full``, ``redacted`` or ``none``, docs/privacy.md)."""
    from tqdm import tqdm

    from agentrft.envs.registry import task_source
    from agentrft.evaluation import evaluate_rows, summarize, write_eval_outputs
    from agentrft.jobs.provenance import eval_provenance
    from agentrft.privacy import Redactor

    source = task_source(env_name, split, data, tools, grader)
    for err in source.skipped:
        click.secho(f"skipped {err}", fg="yellow", err=True)
    rows = source.rows[:limit] if limit else source.rows
    t0 = time.perf_counter()
    sampler, cf = sampler_and_format(model, chat_format)
    with tqdm(total=len(rows) * samples, desc=f"eval {source.env.name}", unit="rollout", disable=quiet) as bar:
        graded = evaluate_rows(rows, source.env, sampler, cf, rollout, samples=samples, batch_size=batch_size,
                               progress=bar.update)
    summary = summarize(graded, wall_s=time.perf_counter() - t0)
    summary.update(model=model, env=source.env.name, env_description=source.env.description,
                   split=str(data) if data else split, samples=samples)
    summary["provenance"] = eval_provenance(model, rollout, source.env.grade, source.env)
    write_eval_outputs(out, graded, summary, Redactor(privacy))
    return summary


def print_summary_table(rows: dict[str, dict]) -> None:
    """One column per stage/run: reward, accuracy, exact/partial counts, tool calls, tool errors, tokens, time;
    then one line per category for each run whose summary has ``by_category``.

    Two times per rollout, because batching makes them differ: "wall time / rollout" is the eval's wall time
    over its rollouts (``seconds_per_rollout``); "time in batch / rollout" is the mean time from a rollout's
    batch start to its own end (``rollout_span_s_mean``), which counts the lockstep decoding of the whole
    batch and so is not the latency one rollout would see alone.
    """
    metrics = [  # (summary keys, first present wins: older summaries have only latency_s_mean), label, format
        (("reward_mean",), "mean reward", "{:.3f}"),
        (("accuracy",), "accuracy", "{:.1%}"),
        (("exact",), "exact (reward >= threshold)", "{:.0f}"),
        (("partial",), "partial credit", "{:.0f}"),
        (("zero",), "zero reward", "{:.0f}"),
        (("tool_calls_per_rollout",), "tool calls / rollout", "{:.2f}"),
        (("tool_call_rate",), "rollouts with a tool call", "{:.1%}"),
        (("tool_error_rate",), "tool error rate", "{:.1%}"),
        (("schema_violations",), "schema violations", "{:.0f}"),
        (("tokens_mean",), "tokens / rollout", "{:.0f}"),
        (("rollout_span_s_mean", "latency_s_mean"), "time in batch / rollout (s)", "{:.2f}"),
        (("seconds_per_rollout",), "wall time / rollout (s)", "{:.2f}"),
        (("wall_s",), "wall time (s)", "{:.1f}"),
    ]

    def cell(summary: dict, keys: tuple[str, ...], fmt: str) -> str:
        v = next((summary[k] for k in keys if k in summary), None)
        return fmt.format(v) if isinstance(v, (int, float)) else "-"

    names = list(rows)
    width = max(len(m[1]) for m in metrics) + 2
    click.echo("".ljust(width) + "".join(n.rjust(14) for n in names))
    for keys, label, fmt in metrics:
        click.echo(label.ljust(width) + "".join(cell(rows[n], keys, fmt).rjust(14) for n in names))
    for n in names:
        by_category = rows[n].get("by_category") or {}
        if by_category:
            click.echo(f"by category ({n}):" if len(names) > 1 else "by category:")
        for category, c in by_category.items():
            lo, hi = c["accuracy_ci95"]
            click.echo(f"  {category}: n={c['n']}  accuracy {c['accuracy']:.1%} [{lo:.1%}, {hi:.1%}]  "
                       f"mean reward {c['reward_mean']:.3f}  tool calls / rollout {c['tool_calls_per_rollout']:.2f}")


@click.command("eval")
@task_options
@rollout_options(EVAL_DEFAULTS)
@click.option("--limit", type=int, default=None, help="Evaluate only the first N tasks.")
@click.option("--samples", type=int, default=1, show_default=True, help="Rollouts per task.")
@click.option("--batch-size", type=int, default=EVAL_BATCH_SIZE, show_default=True, help="Rollouts sampled together.")
@data_options
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Writes summary.json and trajectories.jsonl here.")
@click.option("--privacy", type=click.Choice(["full", "redacted", "none"]), default="full", show_default=True,
              help="What trajectories.jsonl holds: the text as is, redacted (emails, phones, cards, IBANs, API keys; "
                   "no token ids), or no text (docs/privacy.md).")
def eval_cmd(model: str, env_name: str | None, split: str, chat_format: str, limit: int | None, samples: int,
             batch_size: int, data: str | None, tools: str | None, grader: str | None, out: str, privacy: str,
             **options: Any) -> None:
    """Roll out MODEL on an environment's tasks (or your --data with --tools and --grader), grade, and summarise."""
    try:
        rollout = pop_rollout_config(options)
        summary = run_eval(model, env_name, split, limit, samples, out, batch_size, rollout, chat_format, data=data,
                           tools=tools, grader=grader, privacy=privacy)
    except AgentRFTError as e:
        fail(e)
    click.echo(f"environment: {summary['env']} ({summary['env_description']})")
    print_summary_table({"eval": summary})
    click.echo(f"wrote {Path(out) / 'summary.json'} and {Path(out) / 'trajectories.jsonl'}")


KIND_STYLES = {"prompt": dict(fg="bright_black"), "sampled": dict(fg="green"), "env": dict(fg="yellow")}


def render_token_kinds(traj, decode, color: bool) -> str:
    """The trajectory's text with each run of same-kind tokens marked: [prompt]..., [sampled]..., [env]..."""
    out = []
    i, n = 0, len(traj.token_ids)
    while i < n:
        j = i
        while j < n and traj.token_kinds[j] == traj.token_kinds[i]:
            j += 1
        kind = traj.token_kinds[i]
        text = decode(traj.token_ids[i:j])
        seg = f"⟦{kind} ×{j - i}⟧{text}"
        out.append(click.style(seg, **KIND_STYLES[kind]) if color else seg)
        i = j
    return "".join(out)


@click.command("rollout")
@task_options
@rollout_options(EVAL_DEFAULTS)
@data_options
@click.option("--index", type=int, default=0, show_default=True, help="Which task of the split (or of --data).")
@click.option("--json", "as_json", is_flag=True, help="Print the trajectory record as JSON.")
def rollout_cmd(model: str, env_name: str | None, split: str, chat_format: str, data: str | None, tools: str | None,
                grader: str | None, index: int, as_json: bool, **options: Any) -> None:
    """Roll out one task and pretty-print the trajectory with token kinds visible."""
    from agentrft.envs.registry import task_source
    from agentrft.evaluation import grade_safely
    from agentrft.rollout.episode import run_episodes

    try:
        rollout = pop_rollout_config(options)
        source = task_source(env_name, split, data, tools, grader)
        if not 0 <= index < len(source.rows):
            raise AgentRFTError(f"--index {index} out of range: {data or 'split ' + repr(split)} has "
                                f"{len(source.rows)} tasks")
        row = source.rows[index]
        sampler, cf = sampler_and_format(model, chat_format)
        (traj,) = run_episodes([row], source.env.make_env, sampler, cf, rollout)
    except AgentRFTError as e:
        fail(e)
    grade = grade_safely(source.env.grade, traj, row)
    if as_json:
        d = traj.to_dict()
        d["grade"] = grade.to_dict()
        click.echo(json.dumps(d, indent=2, ensure_ascii=False))
        return
    click.echo(render_token_kinds(traj, cf.decode, color=sys.stdout.isatty()))
    click.echo("")
    for r in traj.tool_calls:
        status = "ok" if r.error is None else f"ERROR {r.error.kind.value}"
        click.echo(f"tool call turn {r.turn}: {r.call.name}({json.dumps(r.call.arguments)}) -> {status} in "
                   f"{r.latency_s * 1000:.1f} ms")
    click.echo(f"stop: {traj.stop_reason.value if traj.stop_reason else None}  turns: {traj.turns}  tokens: "
               f"{traj.num_tokens} (sampled {traj.num_sampled_tokens})  reward: {grade.reward:.3f}  "
               f"trace_id: {traj.trace_id}")
