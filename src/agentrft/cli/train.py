"""Change the weights: ``agentrft train CONFIG.yaml`` and ``agentrft quickstart``."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import click

from agentrft.cli.common import fail
from agentrft.cli.measure import print_summary_table
from agentrft.errors import AgentRFTError


@click.command("train")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--resume", is_flag=True, help="Continue the run in out_dir from its latest valid checkpoint.")
@click.option("--rebuild-store", is_flag=True,
              help="With --resume: if run.db is damaged, keep it aside and continue from the checkpoints with a new "
                   "store (the history it held is lost).")
@click.option("--allow-config-change", is_flag=True,
              help="With --resume: continue with a config that differs from the run's saved one (the differences "
                   "are printed and recorded in run.db); without it such a resume is refused.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Override out_dir.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set training.max_steps=3 (value parsed as YAML).")
def train_cmd(config: str, resume: bool, rebuild_store: bool, allow_config_change: bool, out_dir: str | None,
              overrides: tuple[str, ...]) -> None:
    """Train with CONFIG.yaml (method: sft | dpo | rft)."""
    from agentrft.config import load_config, parse_override
    from agentrft.train.runner import RunInterrupted, run_job

    try:
        ov = dict(parse_override(item) for item in overrides)
        if out_dir:
            ov["out_dir"] = out_dir
        cfg = load_config(config, ov)
        result = run_job(cfg, resume=resume, log=click.echo, rebuild_store=rebuild_store,
                         allow_config_change=allow_config_change)
    except RunInterrupted as e:
        click.secho(f"run {e}", fg="yellow", err=True)
        sys.exit(128 + e.signum)  # the shell's convention for "ended by signal N"
    except AgentRFTError as e:
        fail(e)
    if result.final_eval:
        print_summary_table({"final eval": result.final_eval})
    else:
        click.echo("validation evals were off (training.eval_samples: 0)")
    click.echo(f"run directory: {result.run_dir}  steps: {result.steps}"
               + ("  (stopped early: validation plateau)" if result.stopped_early and result.status != "stopped"
                  else "")
               + (f"  status: {result.status}" if result.status != "completed" else "")
               + (f"  warning: {result.warning}" if result.warning else ""))


@click.command("quickstart")
@click.option("--out", type=click.Path(file_okay=False), default="quickstart-out", show_default=True)
@click.option("--model", default="smollm2-135m", show_default=True)
@click.option("--test-tasks", type=int, default=None, help="Held-out test tasks per eval (default: the recipe's).")
@click.option("--sft-steps", type=int, default=None)
@click.option("--rft-steps", type=int, default=None)
def quickstart_cmd(out: str, model: str, test_tasks: int | None, sft_steps: int | None, rft_steps: int | None) -> None:
    """The pragmatic path on the finance environment: baseline → SFT → RFT, each evaluated on held-out tasks."""
    from agentrft.quickstart import QuickstartRecipe, run_quickstart

    changes = {k: v for k, v in dict(test_tasks=test_tasks, sft_steps=sft_steps, rft_steps=rft_steps).items()
               if v is not None}
    recipe = dataclasses.replace(QuickstartRecipe(), **changes)
    try:
        result = run_quickstart(out, model, recipe, log=click.echo)
    except AgentRFTError as e:
        fail(e)
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
    click.echo(f"next: agentrft eval --model {rft_run} --env finance --split test --out {Path(out) / 'eval-test'}"
               "   # the trained agent on the whole test split\n"
               f"      agentrft serve --model {rft_run} --served-name agent"
               "   # an OpenAI-compatible endpoint (docs/serving.md)")
