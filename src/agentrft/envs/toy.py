"""A smoke-test environment whose reward any model can learn in a few steps.

Why it exists: the training pipeline (CLI → runner → RFT step → checkpoints)
must be tested end to end in seconds with a tiny *random* model, which can
never solve a real task. Here the reward is the share of sampled tokens with
an even token id — a signal every policy can move with a handful of
policy-gradient steps — so "reward rises" is a real, fast assertion about the
whole loop. One tool (`note`) lets rollouts exercise tool calls too.
"""

from __future__ import annotations

import random

from agentrft.tools.environment import Environment, EnvSpec
from agentrft.types import Grade, TaskRow, Trajectory


class ToyEnvironment(Environment):
    def note(self, text: str) -> str:
        """Write a note.

        Args:
            text: the note
        """
        return "noted"


def even_token_share(traj: Trajectory, row: TaskRow) -> Grade:
    sampled = [t for t, k in zip(traj.token_ids, traj.token_kinds) if k == "sampled"]
    if not sampled:
        return Grade(reward=0.0, sub_rewards={"even_share": 0.0}, errors={"sample_parse_error": True},
                     error_messages=["no sampled tokens"])
    share = sum(1 for t in sampled if t % 2 == 0) / len(sampled)
    return Grade(reward=share, sub_rewards={"even_share": share})


def _rows(split: str, n: int) -> list[TaskRow]:
    rng = random.Random(f"toy-{split}")
    words = ["apple", "river", "stone", "cloud", "lamp", "tiger", "paper", "glass"]
    return [
        {"id": f"toy-{split}-{i}", "messages": [{"role": "user", "content": f"Say something about {rng.choice(words)}."}]}
        for i in range(n)
    ]


def env_spec() -> EnvSpec:
    sizes = {"train": 64, "validation": 8, "test": 8}
    return EnvSpec(
        name="toy",
        description="smoke test: reward = share of even token ids (learnable by any model)",
        splits=tuple(sizes),
        load_split=lambda split: _rows(split, sizes[split]),
        make_env=lambda row: ToyEnvironment(),
        grade=even_token_share,
    )
