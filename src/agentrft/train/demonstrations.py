"""Demonstrations and preference pairs as token records.

SFT and DPO train on the same data model as RFT: a :class:`Trajectory` whose
assistant tokens are marked ``sampled`` (trainable) and whose prompt, tool
output and formatting tokens are ``prompt``/``env`` (never trained). The record
is built with the very chat-format calls the rollout loop uses, so a
demonstration is token-for-token what the policy would have produced.
"""

from __future__ import annotations

import random
from typing import Any

from agentrft.rollout.episode import normalize_messages
from agentrft.tools.schema import normalize_function_schema
from agentrft.types import Message, Trajectory


def demonstration_trajectory(messages: list[Message], tools: list[dict] | None, chat_format, task_id: str = "") -> Trajectory:
    """Token record of a complete conversation; assistant turns are the trainable tokens (an assistant
    message with ``weight: 0``, as in OpenAI's supervised format, is shown but not trained).

    Tool schemas are offered in the prompt the way a rollout offers them (each normalised as the
    rollout's schema-only tools are), so a model trained here sees at inference the prompt it learned on."""
    msgs = normalize_messages(messages)
    tools = [normalize_function_schema(t) for t in tools] if tools else None
    first = next((i for i, m in enumerate(msgs) if m["role"] == "assistant"), None)
    if first is None:
        raise ValueError("a demonstration needs at least one assistant message")
    traj = Trajectory(task_id=task_id, messages=msgs)
    traj.append_tokens(chat_format.prompt_tokens(msgs[:first], tools), "prompt")
    i = first
    while i < len(msgs):
        m = msgs[i]
        if m["role"] != "assistant":
            raise ValueError(f"message {i}: expected an assistant turn, got {m['role']!r}")
        body = list(chat_format.assistant_tokens(m))
        if m.get("weight", 1) == 0:
            traj.append_tokens(body, "env")
        else:
            traj.append_tokens(body, "sampled", [0.0] * len(body))
        traj.append_tokens(chat_format.turn_end_tokens(body), "env")
        traj.turns += 1
        j = i + 1
        while j < len(msgs) and msgs[j]["role"] != "assistant":
            j += 1
        if j > i + 1:
            traj.append_tokens(chat_format.followup_tokens(msgs[i + 1 : j]), "env")
        i = j
    return traj


def supervised_trajectory(row: dict[str, Any], chat_format) -> Trajectory:
    """A row of OpenAI's supervised format (``messages`` with the assistant targets, ``tools``) as a
    token record."""
    return demonstration_trajectory(row["messages"], row.get("tools"), chat_format, str(row.get("id", "")))


def preference_pair(row: dict[str, Any], chat_format) -> tuple[Trajectory, Trajectory]:
    """A row of OpenAI's preference format (``input``, ``preferred_output``, ``non_preferred_output``), or
    the older ``{"prompt", "chosen", "rejected"}`` message lists, as (chosen, rejected) token records."""
    task_id = str(row.get("id", ""))
    if "input" in row:
        prompt, tools = row["input"]["messages"], row["input"].get("tools")
        chosen, rejected = row["preferred_output"], row["non_preferred_output"]
    else:
        prompt, tools, chosen, rejected = row["prompt"], row.get("tools"), row["chosen"], row["rejected"]
    return (demonstration_trajectory(prompt + chosen, tools, chat_format, task_id),
            demonstration_trajectory(prompt + rejected, tools, chat_format, task_id))


def same_tokens(a: Trajectory, b: Trajectory) -> bool:
    """Whether two records are one rollout, or two with the same tokens (a greedy twin): as a DPO pair they
    have no preference to learn (loss log 2, gradient exactly 0)."""
    return a is b or (bool(a.token_ids) and a.token_ids == b.token_ids and a.token_kinds == b.token_kinds)


def mine_pairs(groups: list[list[tuple[Trajectory, float]]], min_margin: float = 0.1) -> list[tuple[Trajectory, Trajectory]]:
    """DPO pairs from RFT groups: the best vs the worst rollout of each task.

    The rejected side is the lowest-rewarded rollout that scored strictly below the best and differs from it
    in its tokens; a group gives no pair when there is none, or when the rewards differ by less than
    ``min_margin`` (no preference signal). So ``min_margin: 0`` never pairs a rollout with itself (all rewards
    tied) or with an equal-reward twin. Infra failures must be removed beforehand.
    """
    pairs = []
    for group in groups:
        if len(group) < 2:
            continue
        best, best_reward = max(group, key=lambda tr: tr[1])
        below = [(t, r) for t, r in group if r < best_reward and not same_tokens(t, best)]
        if not below:
            continue
        worst, worst_reward = min(below, key=lambda tr: tr[1])
        if best_reward - worst_reward >= min_margin:
            pairs.append((best, worst))
    return pairs


def pairs_from_records(records: list[dict[str, Any]], min_margin: float = 0.1) -> list[tuple[Trajectory, Trajectory]]:
    """DPO pairs from a run's logged samples (``RunStore.trajectories()`` records): one group per
    (step, task), infra failures and unrewarded records left out, then :func:`mine_pairs`. A run stored with
    ``privacy.store: redacted`` or ``none`` has no token ids to pair: :class:`~agentrft.privacy.TokensNotStoredError`."""
    from agentrft.privacy import require_tokens

    require_tokens(records, "DPO pairs from a run's samples (data.pairs_from_run)")
    groups: dict[tuple[int, str], list[tuple[Trajectory, float]]] = {}
    for rec in records:
        if rec.get("reward") is None:
            continue
        traj = Trajectory.from_dict({k: v for k, v in rec.items() if k not in ("grade", "reward", "step", "split")})
        if traj.is_infra_failure:
            continue
        groups.setdefault((int(rec.get("step", 0)), traj.task_id), []).append((traj, float(rec["reward"])))
    return mine_pairs(list(groups.values()), min_margin)


def cycle_batches(items: list[Any], batch_size: int, step: int, seed: int) -> list[Any]:
    """The items of 1-based ``step``: a seeded permutation per epoch, consumed in order.

    A pure function of (items, batch_size, step, seed): the data position of a
    resumed run is just its step number.
    """
    n = len(items)
    if n == 0:
        raise ValueError("no training items")
    perms: dict[int, list[int]] = {}
    out = []
    for pos in range((step - 1) * batch_size, step * batch_size):
        epoch, idx = divmod(pos, n)
        if epoch not in perms:
            perms[epoch] = list(range(n))
            random.Random(seed * 7919 + epoch).shuffle(perms[epoch])
        out.append(items[perms[epoch][idx]])
    return out


def steps_per_epoch(n_items: int, batch_size: int) -> int:
    return max(1, -(-n_items // batch_size))


__all__ = ["demonstration_trajectory", "preference_pair", "supervised_trajectory", "mine_pairs", "same_tokens", "pairs_from_records", "cycle_batches", "steps_per_epoch"]
