"""Customer-support environment: refund tickets against a real SQLite database.

What: a customer writes in ("my order 1042 never arrived, can I get a
refund?"); the agent looks up the customer and the order, reads the refund
policy, issues a refund only when the policy allows it (for the allowed
amount), and closes the ticket with ``send_reply``. Each rollout works on its
own copy of a seeded shop database, so the refund it writes is real state
that the grader -- and the tests -- can check.

Why it exists: it exercises what makes agent RFT hard and what a toy
calculator does not -- side effects that must be right (a refund is either
allowed or forbidden), guardrails that refuse (one refund per ticket, a
read-only SQL tool), a reply that must be truthful, and a cost term in a
continuous reward.

Layout: :mod:`~agentrft.envs.support.database` (schema, seeded generator,
template per process), :mod:`~agentrft.envs.support.env` (:class:`SupportEnv`,
the tools), :mod:`~agentrft.envs.support.tasks` (task rows and splits),
:mod:`~agentrft.envs.support.grading` (the reward),
:mod:`~agentrft.envs.support.oracles` (scripted policies, demonstrations).
See docs/env-support.md.
"""

from __future__ import annotations

from agentrft.tools.environment import EnvSpec
from agentrft.envs.support.database import MAX_REFUND, REFUND_WINDOW_DAYS, TODAY, build_database, generate_records
from agentrft.envs.support.env import SupportEnv
from agentrft.envs.support.grading import grade
from agentrft.envs.support.oracles import ORACLES, do_nothing, oracle, oracle_conversation, play
from agentrft.envs.support.tasks import SCENARIOS, SPLIT_SIZES, load_split
from agentrft.types import TaskRow

__all__ = [
    "MAX_REFUND",
    "REFUND_WINDOW_DAYS",
    "SCENARIOS",
    "SPLIT_SIZES",
    "TODAY",
    "SupportEnv",
    "build_database",
    "do_nothing",
    "env_spec",
    "generate_records",
    "grade",
    "load_split",
    "make_env",
    "oracle",
    "oracle_conversation",
    "play",
]


def make_env(row: TaskRow) -> SupportEnv:
    """A fresh environment for one rollout of ``row`` (its database is copied in ``setup``)."""
    return SupportEnv(seed=int(row.get("db_seed", 0)))


def env_spec() -> EnvSpec:
    """The registry entry for ``support``."""
    return EnvSpec(
        name="support",
        description="Customer-support refund tickets over a per-rollout SQLite database "
                    "(refund only when policy allows, read-only SQL, reply with the outcome).",
        splits=tuple(SPLIT_SIZES),
        load_split=load_split,
        make_env=make_env,
        grade=grade,
        oracles={name: (lambda row, _n=name: oracle_conversation(row, _n)) for name in ORACLES},
    )
