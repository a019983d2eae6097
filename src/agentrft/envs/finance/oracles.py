"""Scripted oracle policies for the finance environment, and the demonstrations they make.

A policy maps a task row to the assistant messages it would write (OpenAI
chat format; tool calls with deterministic ids ``call_1``, ``call_2``, ...).
It knows the answer from the row's reference fields, so it never needs to see
a tool result; :func:`oracle_conversation` then executes those calls against
a fresh environment, exactly as a rollout would (same tool wrappers, same
executor), and interleaves the real tool results. The complete conversation
is an SFT demonstration; two policies on the same row are a preference pair.

* :func:`efficient_oracle` -- search with a precise query, read the gold
  annual report, answer: 3 assistant turns, 2 tool calls.
* :func:`verbose_oracle` -- a vague search, a read of a distractor (guidance,
  an estimate, a look-alike company's filing), a second search, another
  distractor, then the gold report and the answer: 6 turns, 5 tool calls. Same
  answer, more cost: what operational graders and DPO should learn to avoid.
* :func:`logged_oracle` -- what a production agent's logs look like: mostly
  verbose traces, some efficient ones (a seeded, per-task choice, 1 in 4
  efficient by default). SFT imitates the mix and, decoding greedily, its
  majority habit; RFT with a cost-aware reward has both behaviours in its
  samples and learns which one pays (the quickstart's path).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from agentrft.envs.finance.corpus import METRICS
from agentrft.envs.finance.environment import SEARCH_TOP_K, FinanceEnvironment
from agentrft.envs.finance.retrieval import default_index
from agentrft.tools.environment import Environment
from agentrft.rollout.scripted import play_script
from agentrft.types import Message, TaskRow, ToolCall

__all__ = ["Policy", "answer_text", "efficient_oracle", "good_query", "logged_oracle", "oracle_conversation",
           "verbose_oracle"]

LOGGED_EFFICIENT_SHARE = 0.25

Policy = Callable[[TaskRow], list[Message]]


def answer_text(row: TaskRow) -> str:
    """The reference answer as the bare number an agent should reply with ("1234.5", "12450")."""
    value = float(row["answer"])
    return str(int(value)) if row.get("unit") == "employees" else f"{value:.1f}"


def good_query(row: TaskRow) -> str:
    """A query that ranks the row's gold annual report first."""
    return f"{row['company']} annual report fiscal {row['year']}"


class _Script:
    """Assistant messages with tool-call ids numbered across the conversation."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def call(self, name: str, **arguments: str) -> None:
        call = ToolCall(name=name, arguments=arguments, id=f"call_{self._calls() + 1}")
        self.messages.append({"role": "assistant", "content": "", "tool_calls": [call.to_openai()]})

    def answer(self, text: str) -> list[Message]:
        self.messages.append({"role": "assistant", "content": text})
        return self.messages

    def _calls(self) -> int:
        return sum(len(m.get("tool_calls", [])) for m in self.messages)


def efficient_oracle(row: TaskRow) -> list[Message]:
    """Search precisely, read the gold annual report, answer with the number."""
    script = _Script()
    script.call("search", query=good_query(row))
    script.call("read", doc_id=row["gold_doc_id"])
    return script.answer(answer_text(row))


def verbose_oracle(row: TaskRow) -> list[Message]:
    """Vague search, a distractor, a precise search, another distractor, the gold report, the answer."""
    index, gold = default_index(), row["gold_doc_id"]
    vague = f"{row['company']} {METRICS[row['metric']].label} {row['year']}"
    read: list[str] = []

    def distractor(query: str) -> str | None:
        ids = [d.doc_id for d in index.search(query, k=SEARCH_TOP_K)]
        pick = next((i for i in ids if i != gold and i not in read), None)
        if pick is not None:
            read.append(pick)
        return pick

    script = _Script()
    for query in (vague, good_query(row)):
        script.call("search", query=query)
        pick = distractor(query)
        if pick is not None:
            script.call("read", doc_id=pick)
    script.call("read", doc_id=gold)
    return script.answer(answer_text(row))


def logged_oracle(row: TaskRow, efficient_share: float = LOGGED_EFFICIENT_SHARE) -> list[Message]:
    """The efficient oracle for a seeded ``efficient_share`` of tasks, the verbose one for the rest.

    The choice is a pure function of the row id (a stable hash, not Python's
    salted ``hash``), so every process and every rerun picks the same way.
    """
    if not 0.0 <= efficient_share <= 1.0:
        raise ValueError(f"efficient_share must be in [0, 1], got {efficient_share}")
    digest = hashlib.sha256(str(row.get("id", "")).encode()).digest()
    draw = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    return efficient_oracle(row) if draw < efficient_share else verbose_oracle(row)


def oracle_conversation(row: TaskRow, policy: Policy, env: Environment | None = None) -> list[Message]:
    """The row's prompt, then the policy's turns with their tool calls really executed.

    Returns the full OpenAI-format message list: system and user messages,
    each assistant turn, a ``tool`` message (``tool_call_id``, ``name``,
    ``content``) per call, and the final answer. ``env`` defaults to a fresh
    :class:`FinanceEnvironment`; it is set up with ``row`` and closed.
    """
    env = env if env is not None else FinanceEnvironment()
    return play_script(row, policy(row), env).messages
