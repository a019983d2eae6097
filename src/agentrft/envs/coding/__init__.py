"""Coding environment: fix the bug in a tiny Python repository until its tests pass.

What: each task is a seeded repository -- one module with one bug (an
off-by-one range, a flipped comparison, a missing rule, ...), a test file of
plain-``assert`` tests that all fail, and a ``run_tests.py`` that needs no
pytest. The agent works in a per-rollout bubblewrap sandbox with
``list_files``, ``read_file``, ``write_file``, ``replace_in_file`` and
``run_tests``; the reward is the fraction of tests passing at the end, minus a
small cost per tool call beyond a target.

Why it exists: it is the environment where the reward is *executed*: the
policy's code runs (so it must be sandboxed), edits are state that the grader
must rebuild after the sandbox is gone, and the cheapest "fix" -- editing the
tests -- is refused and would not count anyway.

Layout: :mod:`~agentrft.envs.coding.tasks` (templates, repositories, rows,
splits), :mod:`~agentrft.envs.coding.env` (:class:`CodingEnv`, the tools and
the edit rules), :mod:`~agentrft.envs.coding.grading` (replay and check),
:mod:`~agentrft.envs.coding.oracles` (scripted policies, demonstrations).
See docs/env-coding.md.
"""

from __future__ import annotations

from agentrft.envs.coding.env import CodingEnv, TestRun, apply_edit, repo_path, replace_once, run_test_suite
from agentrft.envs.coding.grading import COST_PER_EXTRA_CALL, MAX_COST, final_files, grade
from agentrft.envs.coding.oracles import ORACLES, do_nothing, oracle, oracle_conversation, play
from agentrft.envs.coding.tasks import SPLIT_SIZES, SYSTEM_PROMPT, TASKS, BugTask, get_task, load_split
from agentrft.tools.environment import EnvSpec
from agentrft.types import TaskRow

__all__ = [
    "COST_PER_EXTRA_CALL",
    "MAX_COST",
    "ORACLES",
    "SPLIT_SIZES",
    "SYSTEM_PROMPT",
    "TASKS",
    "BugTask",
    "CodingEnv",
    "TestRun",
    "apply_edit",
    "do_nothing",
    "env_spec",
    "final_files",
    "get_task",
    "grade",
    "load_split",
    "make_env",
    "oracle",
    "oracle_conversation",
    "play",
    "repo_path",
    "replace_once",
    "run_test_suite",
]


def make_env(row: TaskRow) -> CodingEnv:
    """A fresh environment for one rollout of ``row`` (its sandbox is made in ``setup``)."""
    return CodingEnv()


def env_spec() -> EnvSpec:
    """The registry entry for ``coding``."""
    return EnvSpec(
        name="coding",
        description="Fix the bug in a tiny Python repository in a sandbox until its tests pass "
                    "(tools: list_files, read_file, write_file, replace_in_file, run_tests; "
                    "reward: share of tests passing minus a tool-call cost).",
        splits=tuple(SPLIT_SIZES),
        load_split=load_split,
        make_env=make_env,
        grade=grade,
        oracles={name: (lambda row, _n=name: oracle_conversation(row, _n)) for name in ORACLES},
    )
