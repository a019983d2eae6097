"""The job's environment, tasks and reward, from its config: what the trainer and its rollout workers build.

:func:`job_tasks` is what :func:`agentrft.train.runner.setup` runs to get the
environment, the training and validation rows and the reward of a job; a Ray
rollout worker (:mod:`agentrft.train.rollout_workers`) runs it too, from the
run's resolved config, so both grade with the same reward.
"""

from __future__ import annotations

from agentrft.config import JobConfig, Method
from agentrft.envs.registry import get_env
from agentrft.errors import ConfigError
from agentrft.tools.environment import EnvSpec
from agentrft.train.context import GradeFn

__all__ = ["job_tasks", "load_rows", "reward_of", "task_file"]


def load_rows(env: EnvSpec | None, split: str, file: str | None, limit: int | None) -> list[dict]:
    if file:
        from agentrft.datasets import load_jsonl_dataset

        rows = load_jsonl_dataset(file).rows
    else:
        if split not in env.splits:
            raise ConfigError(f"environment {env.name!r} has no split {split!r}; splits: {', '.join(env.splits)}")
        rows = env.load_split(split)
    return rows[:limit] if limit else rows


def job_tasks(cfg: JobConfig, grade: GradeFn | None) -> tuple[EnvSpec, list[dict], list[dict], GradeFn]:
    """The environment, training tasks, validation tasks and reward of the job.

    Without ``data.env``, a job on data files runs its rows with their own tools (plus ``tools``
    servers): :func:`~agentrft.envs.external.external_env_spec`, no prompt or tool of ours."""
    d = cfg.data
    name = d.env_name()
    if name is not None:
        env = get_env(name)
        reward = reward_of(cfg, env, grade)
        train_rows = load_rows(env, d.train_split, task_file(cfg), d.limit_train)
        eval_rows = load_rows(env, d.eval_split, d.eval_file, d.limit_eval)[: cfg.training.eval_samples]
        return env, train_rows, eval_rows, reward
    from agentrft.envs.external import external_env_spec, load_tools_config

    reward = reward_of(cfg, None, grade) if (grade is not None or cfg.grader is not None) else _no_reward
    file = task_file(cfg)
    train_rows = load_rows(None, d.train_split, file, d.limit_train) if file else []
    if cfg.method == Method.RFT and not train_rows:
        raise ConfigError("method 'rft' without data.env needs data.train_file (the tasks to roll out)")
    eval_rows = load_rows(None, d.eval_split, d.eval_file, d.limit_eval) if d.eval_file else []
    env = external_env_spec(train_rows, load_tools_config(cfg.tools), reward)
    return env, train_rows, eval_rows[: cfg.training.eval_samples], reward


def task_file(cfg: JobConfig) -> str | None:
    """``data.train_file`` when it holds tasks (not the SFT demonstrations or DPO pairs themselves)."""
    d = cfg.data
    if cfg.method == Method.SFT and d.demonstrations_source() == d.train_file:
        return None
    if cfg.method == Method.DPO and d.pairs_source() == d.train_file:
        return None
    return d.train_file


def _no_reward(trajectory, row):
    raise ConfigError("this job has no grader (set 'grader' to evaluate it)")


def reward_of(cfg: JobConfig, env: EnvSpec | None, grade: GradeFn | None) -> GradeFn:
    """The reward: a Python function from the caller, else the config's grader spec, else the environment's."""
    if grade is not None and cfg.grader is not None:
        raise ConfigError("give the reward either as a grader spec in the config or as a function, not both")
    if cfg.grader is not None:
        from agentrft.graders import load_grader

        return load_grader(cfg.grader).grade  # (sample: Trajectory, item: row) -> Grade
    return grade or env.grade
