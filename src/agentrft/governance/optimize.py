"""Measure first: evaluate prompt, tool and guardrail variants before touching the weights.

``agentrft optimize CONFIG`` takes a training job (its model, tasks, grader and
rollout settings) and a list of variants of the system around the model
(:mod:`agentrft.governance.variants`), rolls out the baseline and every variant
on the same validation tasks with the same seeds (greedy unless the job says
otherwise), grades them with the job's grader, and compares each with the
baseline task by task (:mod:`agentrft.governance.report`). Optionally a
proposer model reads the failures of the best variant so far and writes new
variants (:mod:`agentrft.governance.proposer`). The winner -- a variant that
beats the baseline beyond noise, else the baseline -- is written as a training
config, and the failures it still has are sorted into kinds that prompting
tends to fix and kinds that need weights: the verdict.

Why paired and not "the highest mean wins": on 16-64 tasks the accuracy
intervals of two prompts overlap almost always; the pairs remove the
per-task difficulty, and a winner must clear a Bonferroni-widened interval.

Carrying the winner into training: ``best.yaml`` is the base job with the
winner's system prompt, tool descriptions and guardrails in its ``prompt``
section (:class:`~agentrft.config.PromptConfig`, applied to every task of a
training run and its evals by :func:`agentrft.tools.presentation.present_prompt`)
and its budgets in ``rollout``. :func:`evaluate_variant` on :func:`load_best`'s
job reproduces the winner's eval token for token.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agentrft.config import JobConfig, PromptConfig, _format_validation_error, load_config, read_yaml_mapping
from agentrft.errors import ConfigError
from agentrft.evaluation import GradedRollout, evaluate_rows, is_correct, paired_accuracy, summarize, \
    write_eval_outputs
from agentrft.governance.proposer import ProposalError, ProposerConfig, build_prompt, make_client, parse_proposal, \
    proposed_variant
from agentrft.governance.report import failure_breakdown, markdown_report, paired_reward_difference, verdict
from agentrft.governance.variants import BASELINE, Variant, apply_variant, variant_rollout
from agentrft.models.chat_format import ChatFormat
from agentrft.privacy import Redactor
from agentrft.rollout.episode import tools_for_row
from agentrft.rollout.sampler import Sampler
from agentrft.tools.presentation import present_prompt
from agentrft.types import TaskRow

__all__ = ["OptimizeConfig", "evaluate_variant", "load_best", "load_optimize_config", "measurement_tasks",
           "run_optimize"]


class OptimizeConfig(BaseModel):
    """``agentrft optimize CONFIG``: the job to measure, the variants, how winners are chosen."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    base: str | dict[str, Any]
    """The job whose system is varied: a training config (YAML path, relative to this file's folder) or the
    same mapping inline. Its ``model``, ``chat_format``, ``data`` (``env`` or ``eval_file``), ``grader``,
    ``seed``, ``rollout`` and ``training.eval_temperature`` say what is measured and how."""
    split: str | None = None
    """The environment's split to measure on (default: the job's ``data.eval_split``); ignored when the job
    has ``data.eval_file``."""
    limit: int | None = Field(None, ge=1)
    """Measure on the first N tasks only."""
    variants: list[Variant] = Field(default_factory=list)
    """Hand-written variants, each compared with the baseline (the job unchanged)."""
    proposer: ProposerConfig | None = None
    """A chat model that writes more variants from the failures of the best one so far."""
    alpha: float = Field(0.05, gt=0, lt=1)
    """A variant wins only if its paired reward difference's interval at 1 - alpha/k (k variants compared,
    proposals included) lies above zero."""
    accuracy_threshold: float = 0.99
    """Reward at or above which a rollout counts as correct (unless the grader reports ``correct``)."""
    bootstrap_resamples: int = Field(2000, ge=100)
    """Resamples of the paired bootstrap interval."""

    @model_validator(mode="after")
    def _unique_names(self) -> "OptimizeConfig":
        names = [v.name for v in self.variants]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"variant names must be unique; repeated: {dupes}")
        return self


def load_optimize_config(source: str | Path | dict[str, Any]) -> tuple[OptimizeConfig, JobConfig, dict[str, Any]]:
    """The optimize config, its job and the job's raw mapping (``best.yaml`` starts from it)."""
    raw, name, folder = read_yaml_mapping(source, "optimize config")
    try:
        cfg = OptimizeConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, name)) from None
    if isinstance(cfg.base, str):
        path = Path(cfg.base) if Path(cfg.base).is_absolute() else folder / cfg.base
        job_raw = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
        if not isinstance(job_raw, dict):
            raise ConfigError(f"base: {path} is not a training config (a YAML mapping)")
    else:
        job_raw = dict(cfg.base)
    return cfg, load_config(job_raw), job_raw


def measurement_tasks(job: JobConfig, split: str | None = None, limit: int | None = None):
    """The environment (with the job's grader) and the tasks measured: ``data.eval_file``, else the split."""
    from agentrft.envs.registry import task_source

    d = job.data
    env_name = d.env_name()
    if env_name is None and d.eval_file is None:
        raise ConfigError("optimize measures on validation tasks: give the job data.eval_file or data.env")
    source = task_source(env_name, split or d.eval_split, d.eval_file, job.tools, job.grader)
    rows = [r if r.get("id") not in (None, "") else {**r, "id": f"task-{i}"} for i, r in enumerate(source.rows)]
    env, (rows,) = present_prompt(job.prompt, source.env, rows)  # the job as it trains: its prompt section
    return env, rows, (rows[:limit] if limit else rows)


def evaluate_variant(job: JobConfig, variant: Variant | None, sampler: Sampler, chat_format: ChatFormat,
                     split: str | None = None, limit: int | None = None,
                     tasks: tuple[Any, list[TaskRow]] | None = None) -> tuple[list[GradedRollout], dict]:
    """Roll out and grade the job's measured tasks under ``variant`` (``None``: the job as it is), with the
    job's eval rollout (:meth:`~agentrft.config.JobConfig.eval_rollout`) and the variant's budgets."""
    if tasks is None:
        env, _, rows = measurement_tasks(job, split, limit)
    else:
        env, rows = tasks
    spec, shown = apply_variant(env, rows, variant)
    t0 = time.perf_counter()
    graded = evaluate_rows(shown, spec, sampler, chat_format, variant_rollout(job.eval_rollout(), variant))
    return graded, summarize(graded, wall_s=time.perf_counter() - t0)


def _tool_schemas(env, row: TaskRow) -> list[dict[str, Any]]:
    """The tool schemas one rollout of ``row`` is offered (empty when the environment cannot say without
    a set-up)."""
    try:
        return [t.schema() for t in tools_for_row(env.make_env(row), row)]
    except Exception:
        return []


def _system_prompt(row: TaskRow) -> str | None:
    messages = row.get("messages") or []
    if messages and messages[0].get("role") in ("system", "developer"):
        return str(messages[0].get("content") or "")
    return None


def run_optimize(cfg: OptimizeConfig, job: JobConfig, job_raw: dict[str, Any], sampler: Sampler,
                 chat_format: ChatFormat, out_dir: str | Path, proposer_client: Any = None,
                 log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Measure the baseline and every variant, ask the proposer for more, choose, write the outputs to
    ``out_dir`` (``optimize.json``, ``report.md``, ``best.yaml``, one eval folder per variant); returns the
    report. ``proposer_client``: a :class:`~agentrft.graders.model_graders.JudgeClient` (default: one for
    ``cfg.proposer``)."""
    out = Path(out_dir)
    env, all_rows, rows = measurement_tasks(job, cfg.split, cfg.limit)
    names = {t["function"]["name"] for t in _tool_schemas(env, rows[0])} if rows else set()
    for v in cfg.variants:
        unknown = sorted(set(v.tool_descriptions) - names) if names else []
        if unknown:
            raise ConfigError(f"variant {v.name!r}: tool_descriptions names unknown tool(s) {unknown}; "
                              f"tools: {', '.join(sorted(names))}")
    if not rows:
        raise ConfigError("no tasks to measure on")
    results: dict[str, tuple[Variant | None, list[GradedRollout], dict]] = {}
    privacy = Redactor.from_config(job.privacy)

    def measure(variant: Variant | None) -> None:
        name = BASELINE if variant is None else variant.name
        log(f"measuring {name} on {len(rows)} tasks")
        graded, summary = evaluate_variant(job, variant, sampler, chat_format, tasks=(env, rows))
        results[name] = (variant, graded, summary)
        write_eval_outputs(out / "variants" / name, graded, summary, privacy)  # as the job's runs would write

    measure(None)
    for v in cfg.variants:
        measure(v)
    proposals = _propose(cfg, env, rows, results, names, measure, proposer_client, log)
    k = max(1, len(results) - 1)
    paired = {name: _paired(results[BASELINE][1], graded, cfg, k) for name, (_, graded, _) in results.items()
              if name != BASELINE}
    best, choice = _choose(paired, cfg.alpha, k)
    best_variant, best_graded, _ = results[best]
    breakdown = failure_breakdown(best_graded, cfg.accuracy_threshold)
    report = {
        "model": job.model, "env": env.name, "split": job.data.eval_file or cfg.split or job.data.eval_split,
        "n_tasks": len(rows), "task_ids": [r["id"] for r in rows],
        "rollout": job.eval_rollout().model_dump(),
        "variants": [{"name": name, "changes": v.changes() if v else [], "proposed_by": v.proposed_by if v else None,
                      "summary": summary, "paired": paired.get(name)}
                     for name, (v, _, summary) in results.items()],
        "proposals": proposals, "best": best, "choice": choice,
        "failures": breakdown, "verdict": verdict(breakdown, best, best != BASELINE),
        "notes": [],
    }
    _write_report(out, report)  # first: a failure writing best.yaml must not lose the measurement
    report["notes"] += write_best(out, job_raw, job, best_variant)
    _write_report(out, report)
    return report


def _write_report(out: Path, report: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "optimize.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    (out / "report.md").write_text(markdown_report(report), encoding="utf-8")


def _paired(base: list[GradedRollout], other: list[GradedRollout], cfg: OptimizeConfig, k: int) -> dict:
    return {"accuracy": paired_accuracy(base, other, cfg.accuracy_threshold),
            "reward_difference": paired_reward_difference(base, other, confidence=1 - cfg.alpha / k,
                                                          resamples=cfg.bootstrap_resamples)}


def _choose(paired: dict[str, dict], alpha: float, k: int) -> tuple[str, str]:
    """The best variant among those whose reward interval lies above zero, else the baseline; and why."""
    level = f"{1 - alpha / k:.1%} paired interval" + (f" (Bonferroni over {k} variants)" if k > 1 else "")
    winners = {n: p for n, p in paired.items() if p["reward_difference"]["ci"][0] > 0}
    if winners:
        best = max(winners, key=lambda n: winners[n]["reward_difference"]["mean"])
        d = winners[best]["reward_difference"]
        return best, (f"{best} beats the baseline by {d['mean']:+.3f} mean reward, "
                      f"{level} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}].")
    if not paired:
        return BASELINE, "No variants were measured; the baseline stays."
    top = max(paired, key=lambda n: paired[n]["reward_difference"]["mean"])
    d = paired[top]["reward_difference"]
    return BASELINE, (f"No variant beat the baseline beyond noise, so the baseline stays; the best-looking was "
                      f"{top}, {d['mean']:+.3f} mean reward, {level} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}].")


def _propose(cfg: OptimizeConfig, env, rows: list[TaskRow], results: dict, tool_names: set[str],
             measure: Callable[[Variant | None], None], client: Any, log: Callable[[str], None]) -> list[dict]:
    """Proposer rounds: each shows the failures of the best variant so far and measures the proposal.
    A failed request or a malformed reply is recorded and the round skipped."""
    if cfg.proposer is None or cfg.proposer.rounds == 0:
        return []
    client = client if client is not None else make_client(cfg.proposer)
    records = []
    for round_ in range(1, cfg.proposer.rounds + 1):
        k = max(1, len(results) - 1)
        paired = {n: _paired(results[BASELINE][1], g, cfg, k) for n, (_, g, _) in results.items() if n != BASELINE}
        parent = _choose(paired, cfg.alpha, k)[0]
        parent_variant, graded, _ = results[parent]
        failures = [g for g in graded if not g.trajectory.is_infra_failure
                    and not is_correct(g.grade, cfg.accuracy_threshold)][: cfg.proposer.n_failures]
        record: dict[str, Any] = {"round": round_, "parent": parent, "failures_shown": [g.trajectory.task_id
                                                                                         for g in failures]}
        records.append(record)
        if not failures:
            record["status"] = "skipped: the parent fails no task"
            break
        spec, shown = apply_variant(env, rows[:1], parent_variant)
        messages = build_prompt(_system_prompt(shown[0]), _tool_schemas(spec, shown[0]), failures)
        try:
            reply = client.complete(messages, cfg.proposer.model, {"temperature": cfg.proposer.temperature})
            proposal = parse_proposal(reply, tool_names)
        except ProposalError as e:
            record.update(status="malformed reply, skipped", error=str(e))
            log(f"proposer round {round_}: malformed reply ({e})")
            continue
        except Exception as e:  # the endpoint is down, refuses, times out: recorded, never fatal
            record.update(status="request failed, skipped", error=f"{type(e).__name__}: {e}")
            log(f"proposer round {round_}: request failed ({type(e).__name__}: {e})")
            continue
        variant = proposed_variant(parent_variant, proposal, f"proposed-{round_}", round_)
        record.update(status="measured", variant=variant.name, proposal=proposal)
        measure(variant)
    return records


def write_best(out: Path, job_raw: dict[str, Any], job: JobConfig, variant: Variant | None) -> list[str]:
    """``best.yaml``: the base job with the winner's system prompt, tool descriptions and guardrails in its
    ``prompt`` section and its budgets in ``rollout``; returns notes for the report."""
    out.mkdir(parents=True, exist_ok=True)
    raw = json.loads(json.dumps(job_raw))
    notes: list[str] = []
    for stale in ("best_variant.yaml", "best_train.jsonl", "best_eval.jsonl"):  # what older versions wrote
        (out / stale).unlink(missing_ok=True)
    if variant is not None:
        overrides = dict(variant.rollout)
        if variant.tool_output is not None:
            overrides["max_tool_output_chars"] = variant.tool_output.max_chars
        if overrides:
            raw["rollout"] = {**(raw.get("rollout") or {}), **overrides}
        section, note = merged_prompt(job.prompt, variant)
        if section:
            raw["prompt"] = section
        notes += note
    header = (f"# written by agentrft optimize: best = {variant.name if variant else BASELINE}"
              f" ({', '.join(variant.changes()) if variant else 'the base job unchanged'})\n")
    load_config(raw)  # what is written must load
    (out / "best.yaml").write_text(header + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True),
                                   encoding="utf-8")
    return notes


def merged_prompt(base: PromptConfig, variant: Variant) -> tuple[dict[str, Any], list[str]]:
    """The ``prompt`` section that shows the model what ``variant`` measured: the variant was applied to rows
    already presented with the job's own ``prompt`` section, so a prepended system prompt goes before the
    job's; tool descriptions merge (the variant's win). Returns the section (only set keys) and notes."""
    notes: list[str] = []
    system, mode = base.system, base.system_mode
    if variant.system_prompt is not None:
        if variant.system_prompt_mode == "replace" or system is None:
            system, mode = variant.system_prompt, variant.system_prompt_mode
        else:
            system = f"{variant.system_prompt}\n\n{system}"
    descriptions = {**base.tool_descriptions, **variant.tool_descriptions}
    guardrails = base.guardrails
    if variant.guardrails is not None:
        if base.guardrails is not None:
            notes.append("the winner's guardrails replace the job's prompt.guardrails in best.yaml (the measurement "
                         "checked both)")
        guardrails = variant.guardrails.model_dump(exclude_defaults=True)
    section: dict[str, Any] = {}
    if system is not None:
        section.update(system=system, system_mode=mode)
    if descriptions:
        section["tool_descriptions"] = descriptions
    if guardrails is not None:
        section["guardrails"] = guardrails
    return section, notes


def load_best(out_dir: str | Path) -> JobConfig:
    """``best.yaml`` as a job: :func:`evaluate_variant` with no variant on it reproduces the winner's eval."""
    return load_config(Path(out_dir) / "best.yaml")


