"""Scripted policies for the support env, and playing them against a real environment.

What: :func:`oracle` writes the assistant turns of a careful agent for a task
row (``lookup_customer`` -> ``get_order`` -> ``get_policy`` -> ``issue_refund``
when the policy allows it -> ``send_reply``), one tool call per turn, in
OpenAI chat format; :func:`do_nothing` answers in text and touches nothing.
:func:`play` executes such a script against a fresh :class:`SupportEnv`
through the real :class:`~agentrft.tools.executor.ToolExecutor` and returns
the :class:`~agentrft.types.Trajectory` (messages and tool-call records, no
tokens); :func:`oracle_conversation` returns just its messages, a complete
demonstration (system, user, assistant tool calls, tool results with
``tool_call_id``, ...) for SFT or for reading.

Why the oracle reads reference fields (``scenario``, ``expected_refund``):
it is a scripted upper bound for tests and demonstrations, not an agent.
The tool results it gets back are real, so a broken tool or a grader that
disagrees with the database shows up as an oracle scoring below 1.
"""

from __future__ import annotations

from collections.abc import Callable

from agentrft.envs.support.env import SupportEnv
from agentrft.rollout.scripted import play_script
from agentrft.tools.executor import ToolLimits
from agentrft.types import Message, TaskRow, ToolCall, Trajectory

__all__ = ["ORACLES", "Policy", "do_nothing", "oracle", "oracle_conversation", "play"]

Policy = Callable[[TaskRow], list[Message]]

_POLICY_TOPIC = {
    "lost": "lost shipment refund",
    "damaged_recent": "damaged refund",
    "damaged_late": "damaged refund",
    "in_transit": "in transit",
    "cancelled": "cancelled refund",
    "change_of_mind": "change of mind refund",
    "already_refunded": "refund again",
    "not_owner": "verification",
}
_REFUSAL = {
    "damaged_late": "Unfortunately order {o} was delivered more than 30 days ago, so it is not eligible for a "
                    "refund under our damaged-item policy.",
    "in_transit": "Order {o} is still in transit with the carrier, so it is not eligible for a refund; please "
                  "allow a few more days for delivery.",
    "cancelled": "Order {o} was cancelled and never charged, so there is no refund to issue.",
    "change_of_mind": "Unfortunately we can only refund damaged items or lost shipments, so order {o} is not "
                      "eligible for a refund.",
    "already_refunded": "Order {o} has already been refunded, so I cannot issue a second refund.",
    "not_owner": "I'm sorry, but order {o} is not associated with your account, so I cannot issue a refund "
                 "for it.",
}


def oracle(row: TaskRow) -> list[Message]:
    """The assistant turns of an agent that follows the policy exactly (one tool call per turn)."""
    order_id = str(row["order_id"])
    calls = [
        ("lookup_customer", {"email": row["customer_email"]}),
        ("get_order", {"order_id": order_id}),
        ("get_policy", {"topic": _POLICY_TOPIC.get(row.get("scenario", ""), "refund")}),
    ]
    if row["expected_action"] == "refund":
        amount = round(float(row["expected_refund"]), 2)
        reason = "lost shipment" if row.get("scenario") == "lost" else "damaged item"
        calls.append(("issue_refund", {"order_id": order_id, "amount": amount, "reason": reason}))
        reply = (f"I'm sorry about order {order_id}. I've issued a refund of ${amount:.2f} to your original "
                 "payment method; it should appear within 5 business days.")
    else:
        reply = _REFUSAL.get(row.get("scenario", ""), "Unfortunately order {o} is not eligible for a refund.")
        reply = reply.format(o=order_id)
    calls.append(("send_reply", {"message": reply}))
    return [
        {"role": "assistant", "content": "", "tool_calls": [ToolCall(name, args, id=f"call_{i}").to_openai()]}
        for i, (name, args) in enumerate(calls)
    ]


def do_nothing(row: TaskRow) -> list[Message]:
    """A polite text answer that looks nothing up, changes nothing and never closes the ticket."""
    return [{"role": "assistant", "content": "Thanks for reaching out! We'll look into it and get back to you."}]


ORACLES: dict[str, Policy] = {"oracle": oracle, "do_nothing": do_nothing}


def play(row: TaskRow, policy: str | Policy = "oracle", env: SupportEnv | None = None,
         limits: ToolLimits | None = None) -> Trajectory:
    """Run a scripted policy's turns against a real environment; the trajectory without tokens.

    Each assistant message's tool calls are executed (with the executor's
    validation, budget and error records, like a rollout). It stops when the
    environment is done (``ENV_DONE``), at a turn without tool calls
    (``ANSWER``) or when the script ends (``stop_reason`` None). Pass ``env``
    to inspect its database afterwards: it is then set up here but left open
    (the caller closes it); otherwise a fresh one is made and closed.
    """
    script = ORACLES[policy](row) if isinstance(policy, str) else policy(row)
    own_env = env is None
    return play_script(row, script, SupportEnv() if own_env else env, close=own_env, limits=limits)


def oracle_conversation(row: TaskRow, policy: str | Policy = "oracle") -> list[Message]:
    """The full message list of ``policy`` played on ``row``: a demonstration conversation."""
    return play(row, policy).messages
