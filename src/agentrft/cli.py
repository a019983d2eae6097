"""The ``agentrft`` command line.

Thin on purpose: each command parses options, builds the typed pieces and
calls library functions (:mod:`agentrft.evaluation`, the trainers, the grader
tools), so everything the CLI does is also a Python API.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from agentrft.errors import AgentRFTError


def _fail(e: Exception) -> None:
    click.secho(f"error: {e}", fg="red", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """agentrft: reinforcement fine-tuning of tool-using agents."""


@main.command("models")
def models_cmd() -> None:
    """List the bundled model names (any local Hugging Face model folder works too)."""
    from agentrft.models.loading import available_models

    for name in available_models():
        click.echo(name)


@main.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info_cmd(as_json: bool) -> None:
    """What this machine computes with: torch, threads, the allocator, the CPU matmul library."""
    import os

    import torch

    from agentrft import allocator
    from agentrft.models.onednn import auto_choice

    matmul, why = auto_choice()
    facts = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "allocator": allocator.active(),
        "tcmalloc_installed": allocator.find_tcmalloc() is not None,
        "ld_preload_for_children": os.environ.get("LD_PRELOAD"),
        "cpu_matmul_auto": matmul,
        "cpu_matmul_check": why,
    }
    if as_json:
        click.echo(json.dumps(facts))
        return
    for key, value in facts.items():
        click.echo(f"{key:24} {value}")


@main.command("envs")
def envs_cmd() -> None:
    """List the built-in environments."""
    from agentrft.envs.registry import available_envs

    for name in available_envs():
        click.echo(name)


@main.command("tasks")
@click.option("--env", "env_name", default="finance", show_default=True)
@click.option("--split", default="validation", show_default=True)
@click.option("--limit", type=int, default=None)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write JSONL here (default: stdout).")
def tasks_cmd(env_name, split, limit, out):
    """Export an environment's tasks as JSONL in OpenAI's RFT dataset format."""
    from agentrft.datasets import write_jsonl
    from agentrft.envs.registry import get_env

    try:
        env = get_env(env_name)
        if split not in env.splits:
            raise AgentRFTError(f"environment {env_name!r} has no split {split!r}; splits: {', '.join(env.splits)}")
        rows = env.load_split(split)[:limit] if limit else env.load_split(split)
    except AgentRFTError as e:
        _fail(e)
    if out:
        write_jsonl(out, rows)
        click.echo(f"wrote {len(rows)} tasks to {out}")
    else:
        for row in rows:
            click.echo(json.dumps(row, ensure_ascii=False))


def rollout_options(f):
    """Options shared by the commands that roll out a model."""
    opts = [
        click.option("--model", default="smollm2-135m", show_default=True,
                     help="Bundled model name, local HF model folder, or a training run directory (RUN_DIR or "
                          "RUN_DIR@step=N for an earlier checkpoint)."),
        click.option("--env", "env_name", default="finance", show_default=True, help="Built-in environment."),
        click.option("--split", default="validation", show_default=True),
        click.option("--temperature", type=float, default=0.7, show_default=True),
        click.option("--top-p", type=float, default=1.0, show_default=True),
        click.option("--max-turns", type=int, default=6, show_default=True),
        click.option("--max-new-tokens", type=int, default=160, show_default=True, help="Per assistant turn."),
        click.option("--max-total-tokens", type=int, default=2048, show_default=True, help="Per rollout."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--chat-format", default="auto", show_default=True, type=click.Choice(["auto", "hermes", "template"])),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _load(model: str, chat_format: str):
    """``(LoadedModel, ChatFormat)`` for --model (a run directory included); ``auto`` keeps a run's own format."""
    from agentrft.jobs.trained import load_any_model
    from agentrft.models.chat_format import get_chat_format

    loaded = load_any_model(model)
    return loaded, get_chat_format(loaded.tokenizer, loaded.chat_format if chat_format == "auto" else chat_format)


def _build(model: str, chat_format: str):
    from agentrft.rollout.hf_sampler import HFSampler

    loaded, cf = _load(model, chat_format)
    return HFSampler(loaded.model, pad_token_id=loaded.tokenizer.pad_token_id), cf


def _rollout_config(temperature, top_p, max_turns, max_new_tokens, max_total_tokens, seed):
    from agentrft.rollout.episode import RolloutConfig

    return RolloutConfig(max_turns=max_turns, max_new_tokens=max_new_tokens, max_total_tokens=max_total_tokens,
                         temperature=temperature, top_p=top_p, seed=seed)


def resolve_env_and_rows(env_name: str, split: str, data: str | None, tools: str | None, grader: str | None):
    """The environment spec and task rows of an eval: a built-in split, or your file + tools + grader."""
    from agentrft.envs.registry import get_env

    rows = None
    if data:
        from agentrft.datasets import load_jsonl_dataset

        loaded = load_jsonl_dataset(data)
        for err in loaded.errors:
            click.secho(f"skipped {err}", fg="yellow", err=True)
        rows = loaded.rows
    grade = None
    if grader:
        from agentrft.graders import load_grader

        grade = load_grader(grader).grade  # (trajectory, row) -> Grade
    if tools:
        from agentrft.envs.external import external_env_spec, load_tools_config

        if rows is None or grade is None:
            raise AgentRFTError("--tools needs --data (the tasks) and --grader (the reward)")
        return external_env_spec(rows, load_tools_config(tools), grade), rows
    env = get_env(env_name)
    if grade is not None:
        import dataclasses

        env = dataclasses.replace(env, grade=grade)
    if rows is None:
        if split not in env.splits:
            raise AgentRFTError(f"environment {env_name!r} has no split {split!r}; splits: {', '.join(env.splits)}")
        rows = env.load_split(split)
    return env, rows


def run_eval(model, env_name, split, limit, samples, out, batch_size, rcfg, chat_format, data=None, tools=None,
             grader=None, quiet=False) -> dict:
    """Shared by ``eval`` and ``quickstart``: returns the summary dict (also written to OUT)."""
    from tqdm import tqdm

    from agentrft.evaluation import evaluate_rows, summarize, write_eval_outputs

    env, rows = resolve_env_and_rows(env_name, split, data, tools, grader)
    rows = rows[:limit] if limit else rows
    t0 = time.perf_counter()
    sampler, cf = _build(model, chat_format)
    with tqdm(total=len(rows) * samples, desc=f"eval {env.name}", unit="rollout", disable=quiet) as bar:
        graded = evaluate_rows(rows, env, sampler, cf, rcfg, samples=samples, batch_size=batch_size, progress=bar.update)
    summary = summarize(graded, wall_s=time.perf_counter() - t0)
    summary.update(model=model, env=env.name, split=str(data) if data else split, samples=samples)
    write_eval_outputs(out, graded, summary)
    return summary


def print_summary_table(rows: dict[str, dict]) -> None:
    """One column per stage/run: reward, accuracy, tool calls, tool errors, tokens, wall time."""
    metrics = [
        ("reward_mean", "mean reward", "{:.3f}"),
        ("accuracy", "accuracy", "{:.1%}"),
        ("tool_calls_per_rollout", "tool calls / rollout", "{:.2f}"),
        ("tool_call_rate", "rollouts with a tool call", "{:.1%}"),
        ("tool_error_rate", "tool error rate", "{:.1%}"),
        ("tokens_mean", "tokens / rollout", "{:.0f}"),
        ("latency_s_mean", "latency / rollout (s)", "{:.2f}"),
        ("wall_s", "wall time (s)", "{:.1f}"),
    ]
    names = list(rows)
    width = max(len(m[1]) for m in metrics) + 2
    click.echo("".ljust(width) + "".join(n.rjust(14) for n in names))
    for key, label, fmt in metrics:
        cells = []
        for n in names:
            v = rows[n].get(key)
            cells.append((fmt.format(v) if isinstance(v, (int, float)) else "-").rjust(14))
        click.echo(label.ljust(width) + "".join(cells))


@main.command("eval")
@rollout_options
@click.option("--limit", type=int, default=None, help="Evaluate only the first N tasks.")
@click.option("--samples", type=int, default=1, show_default=True, help="Rollouts per task.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Rollouts sampled together.")
@click.option("--data", type=click.Path(exists=True, dir_okay=False), default=None, help="JSONL task file (OpenAI RFT format) instead of a built-in split.")
@click.option("--tools", type=click.Path(exists=True, dir_okay=False), default=None,
              help="tools.yaml: HTTP tool endpoints (Agent RFT wire format) and MCP servers for --data tasks.")
@click.option("--grader", type=click.Path(exists=True, dir_okay=False), default=None, help="Grader spec (OpenAI JSON) to score with.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Writes summary.json and trajectories.jsonl here.")
def eval_cmd(model, env_name, split, temperature, top_p, max_turns, max_new_tokens, max_total_tokens, seed, chat_format,
             limit, samples, batch_size, data, tools, grader, out):
    """Roll out MODEL on an environment's tasks (or your --data with --tools and --grader), grade, and summarise."""
    try:
        rcfg = _rollout_config(temperature, top_p, max_turns, max_new_tokens, max_total_tokens, seed)
        summary = run_eval(model, env_name, split, limit, samples, out, batch_size, rcfg, chat_format, data=data,
                           tools=tools, grader=grader)
    except AgentRFTError as e:
        _fail(e)
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


@main.command("rollout")
@rollout_options
@click.option("--index", type=int, default=0, show_default=True, help="Which task of the split.")
@click.option("--json", "as_json", is_flag=True, help="Print the trajectory record as JSON.")
def rollout_cmd(model, env_name, split, temperature, top_p, max_turns, max_new_tokens, max_total_tokens, seed, chat_format,
                index, as_json):
    """Roll out one task and pretty-print the trajectory with token kinds visible."""
    from agentrft.envs.registry import get_env
    from agentrft.evaluation import grade_safely
    from agentrft.rollout.episode import run_episodes

    try:
        env = get_env(env_name)
        rows = env.load_split(split)
        if not 0 <= index < len(rows):
            raise AgentRFTError(f"--index {index} out of range: split {split!r} has {len(rows)} tasks")
        row = rows[index]
        sampler, cf = _build(model, chat_format)
        rcfg = _rollout_config(temperature, top_p, max_turns, max_new_tokens, max_total_tokens, seed)
        (traj,) = run_episodes([row], env.make_env, sampler, cf, rcfg)
    except AgentRFTError as e:
        _fail(e)
    grade = grade_safely(env.grade, traj, row)
    if as_json:
        d = traj.to_dict()
        d["grade"] = grade.to_dict()
        click.echo(json.dumps(d, indent=2, ensure_ascii=False))
        return
    click.echo(render_token_kinds(traj, cf.decode, color=sys.stdout.isatty()))
    click.echo("")
    for r in traj.tool_calls:
        status = "ok" if r.error is None else f"ERROR {r.error.kind.value}"
        click.echo(f"tool call turn {r.turn}: {r.call.name}({json.dumps(r.call.arguments)}) -> {status} in {r.latency_s * 1000:.1f} ms")
    click.echo(f"stop: {traj.stop_reason.value if traj.stop_reason else None}  turns: {traj.turns}  tokens: "
               f"{traj.num_tokens} (sampled {traj.num_sampled_tokens})  reward: {grade.reward:.3f}  trace_id: {traj.trace_id}")


@main.command("train")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--resume", is_flag=True, help="Continue the run in out_dir from its latest valid checkpoint.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Override out_dir.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set training.max_steps=3 (value parsed as YAML).")
def train_cmd(config, resume, out_dir, overrides):
    """Train with CONFIG.yaml (method: sft | dpo | rft)."""
    import yaml

    from agentrft.config import load_config
    from agentrft.train.runner import run_job

    try:
        ov = {}
        for item in overrides:
            if "=" not in item:
                raise AgentRFTError(f"--set expects KEY=VALUE, got {item!r}")
            key, value = item.split("=", 1)
            ov[key] = yaml.safe_load(value)
        if out_dir:
            ov["out_dir"] = out_dir
        cfg = load_config(config, ov)
        result = run_job(cfg, resume=resume, log=click.echo)
    except AgentRFTError as e:
        _fail(e)
    if result.final_eval:
        print_summary_table({"final eval": result.final_eval})
    else:
        click.echo("validation evals were off (training.eval_samples: 0)")
    click.echo(f"run directory: {result.run_dir}  steps: {result.steps}"
               + ("  (stopped early: validation plateau)" if result.stopped_early else ""))


@main.command("quickstart")
@click.option("--out", type=click.Path(file_okay=False), default="quickstart-out", show_default=True)
@click.option("--model", default="smollm2-135m", show_default=True)
@click.option("--test-tasks", type=int, default=None, help="Held-out test tasks per eval (default: the recipe's).")
@click.option("--sft-steps", type=int, default=None)
@click.option("--rft-steps", type=int, default=None)
def quickstart_cmd(out, model, test_tasks, sft_steps, rft_steps):
    """The pragmatic path on the finance environment: baseline → SFT → RFT, each evaluated on held-out tasks."""
    import dataclasses

    from agentrft.quickstart import QuickstartRecipe, run_quickstart

    recipe = QuickstartRecipe()
    changes = {k: v for k, v in dict(test_tasks=test_tasks, sft_steps=sft_steps, rft_steps=rft_steps).items() if v is not None}
    recipe = dataclasses.replace(recipe, **changes)
    try:
        result = run_quickstart(out, model, recipe, log=click.echo)
    except AgentRFTError as e:
        _fail(e)
    print_summary_table({k: result[k] for k in ("baseline", "sft", "rft")})
    n = result["test_tasks"]
    for stage in ("baseline", "sft", "rft"):
        lo, hi = result[stage]["accuracy_ci95"]
        click.echo(f"{stage:>9}: accuracy {result[stage]['accuracy']:.1%} (95% CI {lo:.1%}-{hi:.1%}, n={n})")
    v = result["verdict"]
    paired = v.get("paired")
    click.echo(f"  verdict: {'met' if v['met'] else 'NOT met'} (RFT vs SFT: {v['accuracy_gain_points']:+.1f} accuracy "
               f"points" + (f", paired McNemar p = {paired['mcnemar_p_value']:.3f}" if paired else "")
               + f"; {v['fewer_tool_calls_share']:.0%} fewer tool calls)")
    click.echo(f"total wall time {result['wall_s']:.0f} s; wrote {Path(out) / 'quickstart.json'}")
    rft_run = result["runs"]["rft"]
    click.echo(f"next: agentrft eval --model {rft_run} --split test   # the trained agent on any split\n"
               f"      agentrft serve --model {rft_run}               # OpenAI-compatible endpoint (docs/serving.md)")


@main.command("export")
@click.argument("run_dir")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="New (or empty) folder to write.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True)
def export_cmd(run_dir, out, dtype):
    """Write RUN_DIR's model (RUN_DIR@step=N: that checkpoint) as a plain Hugging Face folder, LoRA merged.

    transformers and vLLM load the folder with no agentrft code; its chat template renders what the run
    trained on. ``--model FOLDER`` loads it back here.
    """
    from agentrft.jobs.trained import export_run

    try:
        folder = export_run(run_dir, out, dtype=dtype)
    except AgentRFTError as e:
        _fail(e)
    click.echo(f"wrote {folder}")


@main.command("serve")
@click.option("--model", default="smollm2-135m", show_default=True,
              help="Bundled model name, HF model folder (an export), or a run directory (RUN_DIR[@step=N]).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--served-name", default=None, help="The name clients pass as `model` (default: the --model text).")
@click.option("--chat-format", default="auto", show_default=True, type=click.Choice(["auto", "hermes", "template"]))
@click.option("--max-batch-size", type=int, default=8, show_default=True,
              help="Most sequences decoded together (waiting requests with the same settings are batched).")
@click.option("--default-max-tokens", type=int, default=512, show_default=True,
              help="Completion length limit when a request sets no max_tokens.")
def serve_cmd(model, host, port, served_name, chat_format, max_batch_size, default_max_tokens):
    """Serve MODEL behind an OpenAI-compatible API: GET /v1/models, POST /v1/chat/completions (tools included)."""
    import uvicorn

    from agentrft.rollout.hf_sampler import HFSampler
    from agentrft.serving import ServerSettings, create_app

    try:
        if max_batch_size < 1 or default_max_tokens < 1:
            raise AgentRFTError("--max-batch-size and --default-max-tokens must be >= 1")
        t0 = time.perf_counter()
        loaded, cf = _load(model, chat_format)
        sampler = HFSampler(loaded.model, pad_token_id=loaded.tokenizer.pad_token_id, max_batch_size=max_batch_size,
                            prefix_cache_tokens=8192)
        settings = ServerSettings(model_name=served_name or model, max_batch_size=max_batch_size,
                                  default_max_tokens=default_max_tokens)
        app = create_app(sampler, cf, settings)
    except AgentRFTError as e:
        _fail(e)
    click.echo(f"loaded {loaded.description} in {time.perf_counter() - t0:.1f} s (chat format {cf.name})")
    click.echo(f"serving {settings.model_name!r} at http://{host}:{port}/v1")
    uvicorn.run(app, host=host, port=port, log_level="info")


def _register_groups() -> None:
    """Command groups that live next to their subsystem."""
    from agentrft.graders.cli import grader as grader_group

    main.add_command(grader_group, "grader")


_register_groups()


def entry() -> None:
    """The ``agentrft`` console script: the process's allocator first (:mod:`agentrft.allocator`), then the commands."""
    from agentrft.allocator import ensure_preferred

    ensure_preferred()
    main()


if __name__ == "__main__":  # pragma: no cover
    entry()
