"""What the optimizer reports: paired comparisons, why the best variant still fails, and the verdict.

Paired statistics: every variant is rolled out on the same tasks with the same
seeds as the baseline, so each task gives a pair. Accuracy is compared with the
exact McNemar test (:func:`agentrft.evaluation.paired_accuracy`); mean reward
with the mean of the per-task differences and a paired bootstrap percentile
interval (seeded, so the report is reproducible). With k variants compared
against one baseline the interval is Bonferroni-widened to 1 - alpha/k, so the
chance that any of them wins by noise stays at most alpha.

Failure kinds (:func:`classify_failure`), each with the remedy it usually needs:

=====================  =======  ==================================================================
kind                   remedy   what the trajectory shows
=====================  =======  ==================================================================
budget_exhausted       prompt   turns, tokens, context or the tool-call budget ran out (a budget
                                variant or a "be brief" instruction tests it)
cannot_call_tools      weights  no tool call and not one well-formed call in the whole eval: the
                                model cannot follow the tool-call format; prompts do not teach one
malformed_call         weights  only malformed tool calls (the text did not parse as a call)
no_tool_call           prompt   answered without calling a tool, though the model can call tools
wrong_tool             prompt   called a tool that does not exist or a guardrail refused
wrong_arguments        prompt   arguments the schema rejects, or the tool failed on them
unparseable_answer     prompt   tools worked, but the grader found no answer in the reply's format
wrong_answer           weights  tools worked and the answer parsed, but it is wrong: reading and
                                reasoning over the evidence, which RFT trains
=====================  =======  ==================================================================

Why these remedies: instructions fix what the model can do but was not told
(which tool, which argument, which format); they rarely fix what the model
cannot do (emit a format it never learnt, reason over evidence it has).
"""

from __future__ import annotations

import random
import statistics
from collections import Counter
from typing import Any

from agentrft.evaluation import GradedRollout, is_correct
from agentrft.types import StopReason, ToolErrorKind

__all__ = ["FAILURE_REMEDIES", "classify_failure", "failure_breakdown", "markdown_report", "paired_reward_difference",
           "verdict"]

FAILURE_REMEDIES: dict[str, str] = {
    "budget_exhausted": "prompt",
    "cannot_call_tools": "weights",
    "malformed_call": "weights",
    "no_tool_call": "prompt",
    "wrong_tool": "prompt",
    "wrong_arguments": "prompt",
    "unparseable_answer": "prompt",
    "wrong_answer": "weights",
}
"""Failure kind -> ``prompt`` (prompting or settings tend to fix it) or ``weights`` (it needs SFT/RFT)."""

_BUDGET_STOPS = {StopReason.MAX_TURNS, StopReason.MAX_TOKENS, StopReason.CONTEXT_LIMIT}
_WRONG_TOOL = {ToolErrorKind.UNKNOWN_TOOL, ToolErrorKind.GUARDRAIL}
_WRONG_ARGUMENTS = {ToolErrorKind.INVALID_ARGUMENTS, ToolErrorKind.SCHEMA_VIOLATION, ToolErrorKind.EXCEPTION,
                    ToolErrorKind.TOOL_ERROR, ToolErrorKind.TIMEOUT}


def paired_reward_difference(base: list[GradedRollout], other: list[GradedRollout], confidence: float = 0.95,
                             resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Mean of ``other - base`` rewards over the tasks both scored (infra failures left out), with a paired
    bootstrap percentile interval at ``confidence``."""
    def by_task(graded: list[GradedRollout]) -> dict[str, float | None]:
        return {g.trajectory.task_id: None if g.trajectory.is_infra_failure else g.grade.reward for g in graded}

    a, b = by_task(base), by_task(other)
    if a.keys() != b.keys():
        raise ValueError("paired_reward_difference needs both evals on the same tasks")
    diffs = [b[t] - a[t] for t in a if a[t] is not None and b[t] is not None]
    if not diffs:
        return {"n_tasks": 0, "mean": 0.0, "ci": [0.0, 0.0], "confidence": confidence}
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(statistics.fmean(rng.choices(diffs, k=n)) for _ in range(resamples))
    tail = (1 - confidence) / 2
    lo = means[min(resamples - 1, int(tail * resamples))]
    hi = means[max(0, min(resamples - 1, int((1 - tail) * resamples) - 1))]
    return {"n_tasks": n, "mean": statistics.fmean(diffs), "ci": [lo, hi], "confidence": confidence}


def classify_failure(g: GradedRollout, model_calls_tools: bool) -> str:
    """The kind of one failed rollout (see the module's table); ``model_calls_tools``: whether any rollout of
    the same eval made a well-formed tool call."""
    t = g.trajectory
    records = t.tool_calls
    kinds = {r.error.kind for r in records if r.error is not None}
    succeeded = any(r.error is None for r in records)
    if t.stop_reason in _BUDGET_STOPS or ToolErrorKind.BUDGET_EXCEEDED in kinds:
        return "budget_exhausted"
    if not records:
        return "no_tool_call" if model_calls_tools else "cannot_call_tools"
    if not succeeded and kinds <= {ToolErrorKind.PARSE_ERROR}:
        return "malformed_call"
    if not succeeded and kinds & _WRONG_TOOL:
        return "wrong_tool"
    if not succeeded and kinds & _WRONG_ARGUMENTS:
        return "wrong_arguments"
    if g.grade.errors.get("sample_parse_error"):
        return "unparseable_answer"
    return "wrong_answer"


def well_formed_calls(graded: list[GradedRollout]) -> int:
    """Tool calls that parsed as calls (whatever happened when they ran)."""
    return sum(1 for g in graded for r in g.trajectory.tool_calls
               if r.error is None or r.error.kind != ToolErrorKind.PARSE_ERROR)


def failure_breakdown(graded: list[GradedRollout], threshold: float) -> dict[str, Any]:
    """Counts of each failure kind over the rollouts that are not correct (infra failures apart)."""
    ok = [g for g in graded if not g.trajectory.is_infra_failure]
    calls_ok = well_formed_calls(ok) > 0
    failed = [g for g in ok if not is_correct(g.grade, threshold)]
    kinds = Counter(classify_failure(g, calls_ok) for g in failed)
    examples: dict[str, list[str]] = {}
    for g in failed:
        examples.setdefault(classify_failure(g, calls_ok), []).append(g.trajectory.task_id)
    return {
        "rollouts": len(ok),
        "failures": len(failed),
        "well_formed_tool_calls": well_formed_calls(ok),
        "by_kind": dict(sorted(kinds.items())),
        "prompt_fixable": sum(n for k, n in kinds.items() if FAILURE_REMEDIES[k] == "prompt"),
        "needs_weights": sum(n for k, n in kinds.items() if FAILURE_REMEDIES[k] == "weights"),
        "example_tasks": {k: v[:3] for k, v in sorted(examples.items())},
    }


def verdict(breakdown: dict[str, Any], best: str, beat_baseline: bool) -> dict[str, Any]:
    """Whether what still fails looks like something prompting fixes or something that needs RFT.

    ``prompting`` when most remaining failures are prompt-fixable kinds; ``weights`` when most need weights
    (ties go to weights: more prompt search is the cheaper thing to have tried already); ``done`` when
    nothing fails. ``plateau`` says that no variant beat the baseline beyond noise."""
    n, p, w = breakdown["failures"], breakdown["prompt_fixable"], breakdown["needs_weights"]
    kinds = ", ".join(f"{k} {c}" for k, c in sorted(breakdown["by_kind"].items(), key=lambda kv: -kv[1]))
    if n == 0:
        recommendation, reason = "done", f"{best} fails none of the {breakdown['rollouts']} tasks measured"
    elif breakdown["by_kind"].get("cannot_call_tools", 0) and breakdown["well_formed_tool_calls"] == 0:
        recommendation = "weights"
        reason = (f"not one well-formed tool call in {breakdown['rollouts']} rollouts: the model does not follow "
                  "the tool-call format, which instructions do not teach; SFT on demonstrations, then RFT")
    elif w >= p:
        recommendation = "weights"
        reason = f"{w} of {n} failures are kinds prompting rarely fixes ({kinds})"
    else:
        recommendation = "prompting"
        reason = f"{p} of {n} failures are kinds prompting tends to fix ({kinds}): write variants aimed at them"
    return {"recommendation": recommendation, "reason": reason, "plateau": not beat_baseline,
            "failures": n, "prompt_fixable": p, "needs_weights": w}


def _pct(x: float) -> str:
    return f"{x:.1%}"


def markdown_report(report: dict[str, Any]) -> str:
    """The report as markdown: one row per variant, the choice, the proposals and the verdict."""
    lines = [f"# agentrft optimize: {report['env']} ({report['split']}, {report['n_tasks']} tasks, "
             f"model {report['model']})", "",
             "| variant | mean reward | accuracy [95% CI] | tool calls / rollout | tokens / rollout | "
             "time in batch / rollout (s) | Δ reward [CI] | both / only base / only variant | McNemar p |",
             "|---|---|---|---|---|---|---|---|---|"]
    for v in report["variants"]:
        s = v["summary"]
        lo, hi = s["accuracy_ci95"]
        p = v.get("paired")
        if p is None:
            delta = counts = mcnemar = "-"
        else:
            d = p["reward_difference"]
            delta = f"{d['mean']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"
            a = p["accuracy"]
            counts = f"{a['both_correct']} / {a['only_first_correct']} / {a['only_second_correct']}"
            mcnemar = f"{a['p_value']:.3g}"
        name = f"**{v['name']}**" if v["name"] == report["best"] else v["name"]
        lines.append(f"| {name} | {s['reward_mean']:.3f} | {_pct(s['accuracy'])} [{_pct(lo)}, {_pct(hi)}] | "
                     f"{s['tool_calls_per_rollout']:.2f} | {s['tokens_mean']:.0f} | {s['rollout_span_s_mean']:.2f} | "
                     f"{delta} | {counts} | {mcnemar} |")
    lines += ["", f"**Best: {report['best']}.** {report['choice']}", ""]
    if report.get("proposals"):
        lines.append("Proposals:")
        for p in report["proposals"]:
            detail = p.get("variant") or p.get("error", "")
            suffix = f": {detail}" if detail else ""
            lines.append(f"- round {p['round']} (from {p['parent']}): {p['status']}{suffix}")
        lines.append("")
    b, v = report["failures"], report["verdict"]
    kinds = ", ".join(f"{k} {n} ({FAILURE_REMEDIES[k]})" for k, n in b["by_kind"].items()) or "none"
    lines += [f"Failures of {report['best']}: {b['failures']} of {b['rollouts']} ({kinds}); "
              f"well-formed tool calls: {b['well_formed_tool_calls']}.", "",
              f"**Verdict: {v['recommendation']}.** {v['reason']}." + (
                  " No variant beat the baseline beyond noise (plateau)." if v["plateau"] else "")]
    for note in report.get("notes", []):
        lines.append(f"\nNote: {note}")
    return "\n".join(lines) + "\n"
