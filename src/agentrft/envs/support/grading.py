"""The support env's grader: did the agent do what the policy allows, say so, and stay cheap?

What: :func:`grade` scores one trajectory against its task row::

    reward = 0.6 * action + 0.2 * reply + 0.2 * cost      (each in [0, 1])

* ``action`` (1 or 0) -- the ticket's *outcome*: exactly one refund of
  ``expected_refund`` on the ticket's order when the policy allows one; no
  refund at all when it does not, **and** the order was actually looked up
  (``get_order``, or ``sql_query`` naming it), so that "always refuse" is not a
  free 50%. A successful call of a ``forbidden`` tool, a refund of another
  order or of the wrong amount all give 0.
* ``reply`` -- 0.5 for closing the ticket with ``send_reply``, plus 0.5 when the
  reply tells the truth about what happened: the refunded amount when a refund
  was issued, a refusal ("unable", "not eligible", ...) when none was.
* ``cost`` -- 1 up to the row's ``target_tool_calls``, falling linearly to 0 at
  :data:`EXTRA_CALL_BUDGET` calls more (every attempted call counts, failed
  ones too).

A ticket never closed with ``send_reply`` scores 0 on all three: otherwise a
policy that does nothing would earn the "no refund" outcome and the cost term
for free.

Why grade from the tool-call records: the rollout's database is deleted when
the episode ends, but every state change went through ``issue_refund``, whose
successful records (``ToolCallRecord`` with no error) are exactly the refund
rows it wrote; the tests check that correspondence against the database.
"""

from __future__ import annotations

import re
import time

from agentrft.envs.support.env import normalize_order_id
from agentrft.graders.base import OTHER_ERROR, SAMPLE_PARSE_ERROR, no_errors
from agentrft.graders.operational import linear_cost_reward
from agentrft.types import Grade, TaskRow, ToolCallRecord, Trajectory

__all__ = ["EXTRA_CALL_BUDGET", "GRADER_VERSION", "WEIGHTS", "grade"]

GRADER_VERSION = "support-v1"
WEIGHTS = {"action": 0.6, "reply": 0.2, "cost": 0.2}
EXTRA_CALL_BUDGET = 6
"""Tool calls beyond the target at which the cost term reaches 0."""
AMOUNT_TOLERANCE = 0.005

REFUSAL_MARKERS = (
    "unable", "not eligible", "isn't eligible", "ineligible", "cannot", "can't", "can not", "not able",
    "no refund", "not possible", "won't be able", "unfortunately", "decline", "not refundable",
)
_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")


def grade(trajectory: Trajectory, row: TaskRow) -> Grade:
    """Score ``trajectory`` against ``row`` (sub-rewards ``action``, ``reply``, ``cost``); never raises."""
    start = time.perf_counter()
    errors = no_errors()
    try:
        sub = _sub_rewards(trajectory, row)
    except (KeyError, TypeError, ValueError) as e:
        flag = SAMPLE_PARSE_ERROR if isinstance(e, KeyError) else OTHER_ERROR
        errors[flag] = True
        return Grade(0.0, {}, errors, [f"support grader: {type(e).__name__}: {e}"], GRADER_VERSION,
                     time.perf_counter() - start)
    reward = sum(WEIGHTS[k] * v for k, v in sub.items())
    return Grade(round(reward, 6), sub, errors, [], GRADER_VERSION, time.perf_counter() - start)


def _sub_rewards(trajectory: Trajectory, row: TaskRow) -> dict[str, float]:
    records = trajectory.tool_calls
    replies = _succeeded(records, "send_reply")
    if not replies:
        return {"action": 0.0, "reply": 0.0, "cost": 0.0}
    refunds = [_refund_of(r) for r in _succeeded(records, "issue_refund")]
    order_id = normalize_order_id(str(row["order_id"]))
    forbidden_used = any(_succeeded(records, name) for name in row.get("forbidden") or [])

    if row["expected_action"] == "refund":
        expected = float(row["expected_refund"])
        correct = len(refunds) == 1 and refunds[0] == (order_id, round(expected, 2))
    elif row["expected_action"] == "no_refund":
        correct = not refunds and _looked_up(records, order_id)
    else:
        raise ValueError(f"expected_action must be 'refund' or 'no_refund', got {row['expected_action']!r}")
    action = 1.0 if correct and not forbidden_used else 0.0

    message = str(replies[-1].call.arguments.get("message", ""))
    reply = 0.5 + 0.5 * _reply_is_truthful(message, refunds)

    target = int(row.get("target_tool_calls", 5))
    cost = linear_cost_reward(len(records), target, target + EXTRA_CALL_BUDGET)
    return {"action": action, "reply": reply, "cost": cost}


def _succeeded(records: list[ToolCallRecord], name: str) -> list[ToolCallRecord]:
    return [r for r in records if r.call.name == name and r.ok]


def _refund_of(record: ToolCallRecord) -> tuple[str, float]:
    """(order id, amount) as ``issue_refund`` wrote them to the database."""
    args = record.call.arguments
    return normalize_order_id(str(args["order_id"])), round(float(args["amount"]), 2)


def _looked_up(records: list[ToolCallRecord], order_id: str) -> bool:
    for r in _succeeded(records, "get_order"):
        if normalize_order_id(str(r.call.arguments.get("order_id", ""))) == order_id:
            return True
    return any(order_id in str(r.call.arguments.get("query", "")) for r in _succeeded(records, "sql_query"))


def _reply_is_truthful(message: str, refunds: list[tuple[str, float]]) -> bool:
    text = message.lower()
    if refunds:
        amount = refunds[0][1]
        return "refund" in text and any(abs(n - amount) <= AMOUNT_TOLERANCE for n in _numbers(text))
    return any(marker in text.replace("\u2019", "'") for marker in REFUSAL_MARKERS)


def _numbers(text: str) -> list[float]:
    return [float(m.replace(",", "")) for m in _NUMBER.findall(text)]
