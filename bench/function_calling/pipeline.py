"""Function calling, base → SFT → RFT, measured on held-out tasks: the path of docs/own-tasks.md.

The task set is ``bench/function_calling/data`` (``make_tasks.py``: 320 demonstrations in OpenAI's
supervised format, 64 RFT tasks, 64 held-out tasks of four kinds, the ``python`` grader that scores
``sample.output_tools``). Each stage runs through the same code as the CLI:

1. **base**: the model as shipped, greedy, on the held-out tasks (the generic ``data`` environment:
   the rows' own tools, schema-only);
2. **sft**: ``examples/function_calling/sft.yaml`` (``method: sft`` on ``sft_train.jsonl``), then the
   held-out eval;
3. **rft**: ``examples/function_calling/rft.yaml`` from the SFT weights, with the same grader, then the
   held-out eval.

Each eval reports exact-match (reward 1.0) with a Wilson 95 % interval, mean reward, per-category
figures; consecutive stages get an exact McNemar test on the same tasks. Writes
``bench/results/function_calling.json`` (``--json``) and each stage's trajectories under ``--out``.

    .venv/bin/python bench/function_calling/pipeline.py --out out/fc --json bench/results/function_calling.json

``--set rft.training.max_steps=4`` style overrides (``STAGE.KEY=VALUE``) change a stage's config;
``--model`` runs another model (a tiny one for a smoke test).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "bench" / "function_calling" / "data"
EXAMPLES = ROOT / "examples" / "function_calling"


def stage_config(name: str, model: str, out: Path, overrides: dict[str, str], init_from: Path | None = None):
    from agentrft.config import load_config, parse_override

    ov = dict(parse_override(f"{k}={v}") for k, v in overrides.items())
    ov.update(model=model, out_dir=str(out / "runs" / name))
    if init_from is not None:
        ov["init_from"] = str(init_from)
    cfg = load_config(EXAMPLES / f"{name}.yaml", ov)
    # the example configs name their files relative to the repository root
    data = cfg.data.model_copy(update={k: str(ROOT / v) for k, v in cfg.data.model_dump().items()
                                       if k in ("train_file", "eval_file") and v and not Path(v).is_absolute()})
    grader = str(ROOT / cfg.grader) if isinstance(cfg.grader, str) and not Path(cfg.grader).is_absolute() else cfg.grader
    return cfg.model_copy(update={"data": data, "grader": grader})


def evaluate(name: str, model_ref: str, out: Path, heldout: str, max_new_tokens: int, log) -> tuple[dict, list]:
    from agentrft.cli.common import sampler_and_format
    from agentrft.config import RolloutConfig
    from agentrft.envs.registry import task_source
    from agentrft.evaluation import evaluate_rows, summarize, write_eval_outputs

    source = task_source(None, "heldout", heldout, None, str(DATA / "grader.json"))
    sampler, cf = sampler_and_format(model_ref, "auto")
    rollout = RolloutConfig(max_turns=1, max_new_tokens=max_new_tokens, temperature=0.0, seed=0)
    t0 = time.perf_counter()
    graded = evaluate_rows(source.rows, source.env, sampler, cf, rollout)
    summary = summarize(graded, time.perf_counter() - t0)
    write_eval_outputs(out / "eval" / name, graded, summary)
    log(f"[{name}] exact {summary['exact']}/{len(graded)} ({summary['accuracy']:.1%}, 95% CI "
        f"{summary['accuracy_ci95'][0]:.1%}-{summary['accuracy_ci95'][1]:.1%}), reward {summary['reward_mean']:.3f}, "
        f"calls/rollout {summary['tool_calls_per_rollout']:.2f}, schema violations {summary['schema_violations']}")
    keep = ("accuracy", "accuracy_ci95", "exact", "partial", "zero", "reward_mean", "tool_calls_per_rollout",
            "schema_violations", "stop_reasons", "by_category", "wall_s", "seconds_per_rollout")
    return {k: summary[k] for k in keep if k in summary}, graded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", default="out/fc")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--heldout", default=str(DATA / "heldout.jsonl"))
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--stages", default="base,sft,rft")
    ap.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=VALUE")
    args = ap.parse_args()

    from agentrft.evaluation import paired_accuracy
    from agentrft.machine import cpu_count, cpu_model, cpu_vector_extensions
    from agentrft.train.runner import run_job

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = args.stages.split(",")
    overrides: dict[str, dict[str, str]] = {"sft": {}, "rft": {}}
    for item in args.set:
        key, value = item.split("=", 1)
        stage, key = key.split(".", 1)
        overrides[stage][key] = value
    log = print
    result: dict = {"model": args.model, "heldout": str(Path(args.heldout).relative_to(ROOT)) if
                    Path(args.heldout).is_relative_to(ROOT) else args.heldout,
                    "machine": {"cpu": cpu_model(), "cores": cpu_count(), "vector": cpu_vector_extensions(),
                                "python": platform.python_version()},
                    "command": "python bench/function_calling/pipeline.py " + " ".join(
                        f"--set {s}" for s in args.set), "stages": {}}
    graded: dict[str, list] = {}
    model_of = {"base": args.model}
    t_all = time.perf_counter()
    for stage in stages:
        t0 = time.perf_counter()
        if stage != "base":
            init = out / "runs" / "sft" if stage == "rft" else None
            cfg = stage_config(stage, args.model, out, overrides[stage], init_from=init)
            run = run_job(cfg, log=log)
            model_of[stage] = str(run.run_dir)
            result["stages"].setdefault(stage, {})["config"] = cfg.model_dump(mode="json", exclude_defaults=True)
            result["stages"][stage]["train_s"] = time.perf_counter() - t0
        summary, graded[stage] = evaluate(stage, model_of[stage], out, args.heldout, args.max_new_tokens, log)
        result["stages"].setdefault(stage, {})["heldout"] = summary
        result["stages"][stage]["stage_s"] = time.perf_counter() - t0
    for a, b in zip(stages, stages[1:]):
        p = paired_accuracy(graded[a], graded[b])
        result[f"paired_{a}_vs_{b}"] = p
        log(f"[{a} vs {b}] only {a} right {p['only_first_correct']}, only {b} right {p['only_second_correct']}, "
            f"both {p['both_correct']}, McNemar p = {p['p_value']:.4f}")
    result["wall_s"] = time.perf_counter() - t_all
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    text = json.dumps(result, indent=2, default=str)
    (out / "result.json").write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(text + "\n")
    log(f"wrote {out / 'result.json'}")


if __name__ == "__main__":
    main()
