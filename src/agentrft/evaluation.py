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
from agentrft.rollout.episode import run_episodes
from agentrft.rollout.sampler import Sampler
from agentrft.tools.environment import EnvSpec
from agentrft.types import Grade, TaskRow, Trajectory


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


def is_correct(grade: Grade, threshold: float) -> bool:
    """Accuracy convention: an explicit ``correct`` sub-reward if the grader gives one, else reward >= threshold."""
    if "correct" in grade.sub_rewards:
        return grade.sub_rewards["correct"] >= 0.5
    return grade.reward >= threshold


def summarize(graded: list[GradedRollout], wall_s: float, accuracy_threshold: float = 0.99) -> dict:
    """Aggregate figures over graded rollouts. Infra failures are counted, not averaged in."""
    ok = [g for g in graded if not g.trajectory.is_infra_failure]
    n = len(ok)
    calls = sum(len(g.trajectory.tool_calls) for g in ok)
    errors = sum(g.trajectory.num_tool_errors for g in ok)
    rewards = [g.grade.reward for g in ok]

    def mean(xs: Iterable[float]) -> float:
        xs = list(xs)
        return float(statistics.fmean(xs)) if xs else 0.0

    acc = mean(1.0 if is_correct(g.grade, accuracy_threshold) else 0.0 for g in ok)
    # 95 % Wilson interval for accuracy: a gain inside it is noise.
    lo, hi = wilson_interval(acc, n)
    return {
        "n_rollouts": len(graded),
        "n_tasks": len({g.trajectory.task_id for g in graded}),
        "reward_mean": mean(rewards),
        "reward_std": float(statistics.pstdev(rewards)) if len(rewards) > 1 else 0.0,
        "accuracy": acc,
        "accuracy_ci95": [lo, hi],
        "tool_calls_per_rollout": calls / n if n else 0.0,
        "tool_calls_ci95": list(mean_interval([float(len(g.trajectory.tool_calls)) for g in ok])),
        "tool_call_rate": mean(1.0 if g.trajectory.tool_calls else 0.0 for g in ok),
        "tool_error_rate": errors / calls if calls else 0.0,
        "tokens_mean": mean(g.trajectory.num_tokens for g in ok),
        "sampled_tokens_mean": mean(g.trajectory.num_sampled_tokens for g in ok),
        "turns_mean": mean(g.trajectory.turns for g in ok),
        "latency_s_mean": mean(g.trajectory.timings.get("total_s", 0.0) for g in ok),
        "grader_error_rate": mean(1.0 if g.grade.has_error else 0.0 for g in ok),
        "infra_failures": len(graded) - n,
        "stop_reasons": dict(Counter(g.trajectory.stop_reason.value if g.trajectory.stop_reason else "none" for g in graded)),
        "wall_s": wall_s,
        "seconds_per_rollout": wall_s / len(graded) if graded else 0.0,
    }


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
        trajs = run_episodes(chunk, env.make_env, sampler, chat_format, config, samples_per_task=samples)
        rows_of = [chunk[i // samples] for i in range(len(trajs))]
        for row, traj, g in zip(rows_of, trajs, grade_all(grade, trajs, rows_of)):
            graded.append(GradedRollout(row, traj, g))
        if progress:
            progress(len(trajs))
    return graded


def write_eval_outputs(out_dir: str | os.PathLike, graded: list[GradedRollout], summary: dict) -> None:
    """``summary.json`` and ``trajectories.jsonl`` (one trajectory with its grade per line), atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    lines = []
    for g in graded:
        d = g.trajectory.to_dict()
        d["grade"] = g.grade.to_dict()
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
