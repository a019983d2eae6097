"""Measure an agent on a task set: roll out, grade, summarise.

This is the first step of the pragmatic path (measure before changing
weights) and the eval loop every trainer reuses. It joins the pieces: an
environment spec (tasks, per-rollout environments, default grader), a sampler,
a chat format and the episode loop; and it reports the operational figures
that matter to a company running the agent (tool calls, tool errors, tokens,
wall time) next to reward and accuracy.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from agentrft.config import RolloutConfig
from agentrft.models.chat_format import ChatFormat
from agentrft.privacy import Redactor
from agentrft.rollout.collector import collect_episodes
from agentrft.rollout.sampler import Sampler
from agentrft.tools.environment import EnvSpec
from agentrft.types import Grade, TaskRow, ToolCallRecord, Trajectory


@dataclass
class GradedRollout:
    row: TaskRow
    trajectory: Trajectory
    grade: Grade


def grade_safely(grade_fn: Callable[[Trajectory, TaskRow], Grade], traj: Trajectory, row: TaskRow) -> Grade:
    """A grader that raises is recorded as ``other_error``, never a crash and never a silent 0."""
    t0 = time.perf_counter()
    try:
        g = grade_fn(traj, row)
    except Exception as e:
        g = Grade(reward=0.0, errors={"other_error": True}, error_messages=[f"{type(e).__name__}: {e}"])
    if g.reward is None or not math.isfinite(g.reward):
        g = Grade(reward=0.0, sub_rewards=g.sub_rewards, errors={**g.errors, "other_error": True},
                  error_messages=g.error_messages + [f"grader returned non-finite reward {g.reward!r}"],
                  grader_version=g.grader_version)
    if not g.execution_time:
        g.execution_time = time.perf_counter() - t0
    return g


def grade_all(grade_fn: Callable[[Trajectory, TaskRow], Grade], trajs: list[Trajectory], rows: list[TaskRow],
              max_concurrency: int = 8) -> list[Grade]:
    """Grade concurrently with a bound (graders may be subprocesses, HTTP endpoints or model judges)."""
    from concurrent.futures import ThreadPoolExecutor

    if max_concurrency <= 1 or len(trajs) <= 1:
        return [grade_safely(grade_fn, t, r) for t, r in zip(trajs, rows)]
    with ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="agentrft-grade") as pool:
        return list(pool.map(lambda tr: grade_safely(grade_fn, *tr), zip(trajs, rows)))


MODEL_OUTPUT_ERROR = "sample_parse_error"
"""The error flag that marks the model's output (no parseable answer), not a fault of the grader."""


def is_grader_fault(grade: Grade) -> bool:
    """Whether a grade carries a grader fault: any error flag but :data:`MODEL_OUTPUT_ERROR`."""
    return any(v for k, v in grade.errors.items() if k != MODEL_OUTPUT_ERROR)


def is_correct(grade: Grade, threshold: float) -> bool:
    """Accuracy convention: an explicit ``correct`` sub-reward if the grader gives one, else reward >= threshold."""
    if "correct" in grade.sub_rewards:
        return grade.sub_rewards["correct"] >= 0.5
    return grade.reward >= threshold


SCHEMA_VIOLATION = "schema_violation"
"""Error kind (by ``.value``) of a tool call whose arguments fall outside the tool's schema; compared as a
string so the count works whichever :class:`~agentrft.types.ToolErrorKind` member carries it."""

UNCATEGORISED = "(none)"
"""The ``by_category`` bucket of rows that lack the category key."""


def _mean(xs: Iterable[float]) -> float:
    xs = list(xs)
    return float(statistics.fmean(xs)) if xs else 0.0


def _is_schema_violation(record: ToolCallRecord) -> bool:
    kind = record.error.kind if record.error is not None else None
    return getattr(kind, "value", kind) == SCHEMA_VIOLATION


def outcome_figures(ok: list[GradedRollout], accuracy_threshold: float) -> dict[str, Any]:
    """Accuracy (with its 95 % Wilson interval), reward and tool calls over scored rollouts ``ok``.

    ``exact`` / ``partial`` / ``zero`` split the rollouts by reward alone (``>= accuracy_threshold``,
    strictly between 0 and it, ``<= 0``), so they always sum to ``n``; ``accuracy`` follows
    :func:`is_correct` and so differs from ``exact / n`` only for graders that report a ``correct``
    sub-reward. Tool calls are ``traj.tool_calls`` (executed and schema-only calls alike), never the final
    message's ``output_tools``.
    """
    n = len(ok)
    rewards = [g.grade.reward for g in ok]
    acc = _mean(1.0 if is_correct(g.grade, accuracy_threshold) else 0.0 for g in ok)
    lo, hi = wilson_interval(acc, n)  # a gain inside it is noise
    calls = sum(len(g.trajectory.tool_calls) for g in ok)
    exact = sum(1 for r in rewards if r >= accuracy_threshold)
    zero = sum(1 for r in rewards if r <= 0.0 and r < accuracy_threshold)  # exact wins at a threshold <= 0
    return {
        "n": n,
        "accuracy": acc,
        "accuracy_ci95": [lo, hi],
        "reward_mean": _mean(rewards),
        "tool_calls_per_rollout": calls / n if n else 0.0,
        "exact": exact,
        "partial": n - exact - zero,
        "zero": zero,
    }


def summarize_by_category(graded: list[GradedRollout], accuracy_threshold: float = 0.99,
                          category_key: str = "category") -> dict[str, dict[str, Any]]:
    """:func:`outcome_figures` per value of the task rows' ``category_key`` (sorted by name; rows without
    it under ``"(none)"``), plus each category's ``infra_failures``. Empty when no row has the key."""
    if not any(category_key in g.row for g in graded):
        return {}
    groups: dict[str, list[GradedRollout]] = {}
    for g in graded:
        value = g.row.get(category_key)
        groups.setdefault(UNCATEGORISED if value is None else str(value), []).append(g)
    out = {}
    for name in sorted(groups):
        ok = [g for g in groups[name] if not g.trajectory.is_infra_failure]
        out[name] = {**outcome_figures(ok, accuracy_threshold), "infra_failures": len(groups[name]) - len(ok)}
    return out


def summarize(graded: list[GradedRollout], wall_s: float, accuracy_threshold: float = 0.99,
              category_key: str = "category") -> dict:
    """Aggregate figures over graded rollouts. Infra failures are counted, not averaged in.

    Outcomes (over rollouts that did not fail on infrastructure): ``accuracy`` with ``accuracy_ci95``,
    ``reward_mean``, and the reward split ``exact`` (reward >= ``accuracy_threshold``), ``partial``
    (0 < reward < threshold) and ``zero`` (reward <= 0) as counts. With a ``category_key`` field on the
    task rows, ``by_category`` holds the same figures per category (:func:`summarize_by_category`).

    Tool calls come from ``traj.tool_calls`` only: ``tool_calls_total``, ``tool_calls_per_rollout``,
    ``tool_call_rate`` (share of rollouts with one), ``tool_error_rate`` (failed calls / calls) and
    ``schema_violations`` (records whose error kind is ``"schema_violation"``).

    Grading, two different failures: ``grader_fault_rate`` is the share of rollouts whose grade carries a
    grader fault (any error flag but ``sample_parse_error``: the grader's bug or outage, as the RFT loop's
    error budget counts them); ``sample_parse_error_rate`` the share where the model gave no parseable answer
    (the model's failure, scored as such).

    Time, two different measures:

    * ``seconds_per_rollout``: ``wall_s`` / rollouts, the throughput figure -- what a rollout costs when
      run as this eval ran them (batched, graded).
    * ``rollout_span_s_mean``: mean of each rollout's ``timings["total_s"]``, from the start of its batch to
      its own end. Rollouts of a batch are decoded in lockstep, so this is the time a rollout spent in its
      batch (it includes sampling for the other rows), not the latency it would see alone.
    """
    ok = [g for g in graded if not g.trajectory.is_infra_failure]
    n = len(ok)
    figures = outcome_figures(ok, accuracy_threshold)
    del figures["n"]
    records = [r for g in ok for r in g.trajectory.tool_calls]
    errors = sum(1 for r in records if r.error is not None)
    rewards = [g.grade.reward for g in ok]
    span = _mean(g.trajectory.timings.get("total_s", 0.0) for g in ok)
    summary = {
        "n_rollouts": len(graded),
        "n_tasks": len({g.trajectory.task_id for g in graded}),
        **figures,
        "reward_std": float(statistics.pstdev(rewards)) if len(rewards) > 1 else 0.0,
        "tool_calls_total": len(records),
        "tool_calls_ci95": list(mean_interval([float(len(g.trajectory.tool_calls)) for g in ok])),
        "tool_call_rate": _mean(1.0 if g.trajectory.tool_calls else 0.0 for g in ok),
        "tool_error_rate": errors / len(records) if records else 0.0,
        "schema_violations": sum(1 for r in records if _is_schema_violation(r)),
        "tokens_mean": _mean(g.trajectory.num_tokens for g in ok),
        "sampled_tokens_mean": _mean(g.trajectory.num_sampled_tokens for g in ok),
        "turns_mean": _mean(g.trajectory.turns for g in ok),
        "rollout_span_s_mean": span,
        "grader_fault_rate": _mean(1.0 if is_grader_fault(g.grade) else 0.0 for g in ok),
        "sample_parse_error_rate": _mean(1.0 if g.grade.errors.get(MODEL_OUTPUT_ERROR) else 0.0 for g in ok),
        "infra_failures": len(graded) - n,
        "stop_reasons": dict(Counter(g.trajectory.stop_reason.value if g.trajectory.stop_reason else "none"
                                     for g in graded)),
        "wall_s": wall_s,
        "seconds_per_rollout": wall_s / len(graded) if graded else 0.0,
    }
    by_category = summarize_by_category(graded, accuracy_threshold, category_key)
    if by_category:
        summary["by_category"] = by_category
    return summary


def mean_interval(xs: list[float], z: float = 1.96) -> tuple[float, float]:
    """Normal-approximation 95 % interval of the mean of ``xs`` (``mean ± z·s/√n``)."""
    if not xs:
        return (0.0, 0.0)
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return (m, m)
    half = z * statistics.stdev(xs) / math.sqrt(len(xs))
    return (m - half, m + half)


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: how likely a split this uneven of the discordant pairs is by chance.

    ``only_a``: tasks only A got right; ``only_b``: tasks only B got right (on the same tasks). Under "A and B
    are equally accurate" each discordant task is a fair coin, so the p-value is a binomial tail, doubled.
    """
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def paired_accuracy(a: list[GradedRollout], b: list[GradedRollout], threshold: float = 0.99) -> dict:
    """Compare two evals of the same tasks task by task (one rollout per task each): discordant counts and the
    exact McNemar p-value. Unlike two overlapping 95 % intervals this uses the pairing, so it is the test
    that says whether an accuracy gain on one test set is more than noise.

    A task where either eval failed on infrastructure (not the model's doing) is left out of the pairs, as
    :func:`summarize` leaves such rollouts out of accuracy; ``infra_failures_dropped`` counts those tasks and
    ``n_tasks`` the pairs compared."""
    def outcomes(graded: list[GradedRollout]) -> dict[str, bool | None]:
        out: dict[str, bool | None] = {}
        for g in graded:
            if g.trajectory.task_id in out:
                raise ValueError(f"paired_accuracy needs one rollout per task; {g.trajectory.task_id!r} has several")
            out[g.trajectory.task_id] = None if g.trajectory.is_infra_failure else is_correct(g.grade, threshold)
        return out

    oa, ob = outcomes(a), outcomes(b)
    if oa.keys() != ob.keys():
        raise ValueError("paired_accuracy needs both evals on the same tasks")
    pairs = [(oa[t], ob[t]) for t in oa if oa[t] is not None and ob[t] is not None]
    only_a = sum(1 for x, y in pairs if x and not y)
    only_b = sum(1 for x, y in pairs if y and not x)
    return {"n_tasks": len(pairs), "only_first_correct": only_a, "only_second_correct": only_b,
            "both_correct": sum(1 for x, y in pairs if x and y), "p_value": mcnemar_exact_p(only_a, only_b),
            "infra_failures_dropped": len(oa) - len(pairs)}


EVAL_BATCH_SIZE = 16
"""Rollouts sampled together by an eval (a run's periodic eval and ``agentrft eval`` alike): the batch a
greedy row is decoded in is part of what makes two evals give identical tokens."""


def evaluate_rows(
    rows: list[TaskRow],
    env: EnvSpec,
    sampler: Sampler,
    chat_format: ChatFormat,
    config: RolloutConfig,
    samples: int = 1,
    batch_size: int = EVAL_BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
    grade: Callable[[Trajectory, TaskRow], Grade] | None = None,
) -> list[GradedRollout]:
    """Roll out and grade ``rows`` (with ``grade``, default the environment's grader);
    ``batch_size`` rollouts share each sampler call."""
    grade = grade or env.grade
    graded: list[GradedRollout] = []
    tasks_per_batch = max(1, batch_size // max(1, samples))
    for start in range(0, len(rows), tasks_per_batch):
        chunk = rows[start : start + tasks_per_batch]
        trajs = collect_episodes(chunk, env.make_env, sampler, chat_format, config, samples_per_task=samples)
        rows_of = [chunk[i // samples] for i in range(len(trajs))]
        for row, traj, g in zip(rows_of, trajs, grade_all(grade, trajs, rows_of)):
            graded.append(GradedRollout(row, traj, g))
        if progress:
            progress(len(trajs))
    return graded


def write_eval_outputs(out_dir: str | os.PathLike, graded: list[GradedRollout], summary: dict,
                       privacy: Redactor | None = None) -> None:
    """``summary.json`` and ``trajectories.jsonl`` (one trajectory with its grade per line), atomically; each
    written as ``privacy`` says (default: as they are; docs/privacy.md)."""
    privacy = privacy or Redactor()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "summary.json", json.dumps(privacy.written(summary), indent=2) + "\n")
    lines = []
    for g in graded:
        d = privacy.trajectory_record({**g.trajectory.to_dict(), "grade": g.grade.to_dict()})
        lines.append(json.dumps(d, ensure_ascii=False))
    _atomic_write(out / "trajectories.jsonl", "\n".join(lines) + ("\n" if lines else ""))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def variance_report(graded: list[GradedRollout], samples: int) -> dict[str, Any]:
    """Per-task spread of rewards over ``samples`` rollouts each (graded in task-major order)."""
    import statistics

    per_task = []
    for start in range(0, len(graded), samples):
        rewards = [gr.grade.reward for gr in graded[start : start + samples]]
        per_task.append({"task_id": graded[start].trajectory.task_id, "rewards": rewards,
                         "std": statistics.pstdev(rewards) if len(rewards) > 1 else 0.0})
    zero = sum(1 for t in per_task if max(t["rewards"]) - min(t["rewards"]) <= 1e-6)
    all_rewards = [r for t in per_task for r in t["rewards"]]
    return {
        "tasks": len(per_task),
        "samples": samples,
        "reward_mean": statistics.fmean(all_rewards) if all_rewards else 0.0,
        "per_task_std_mean": statistics.fmean(t["std"] for t in per_task) if per_task else 0.0,
        "zero_variance_tasks": zero,
        "zero_variance_fraction": zero / len(per_task) if per_task else 0.0,
        "grader_errors": sum(1 for gr in graded if gr.grade.has_error),
        "per_task": per_task,
    }
