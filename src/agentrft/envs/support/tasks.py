"""Support tickets as OpenAI RFT task rows, in seeded train/validation/test splits.

What: :func:`load_split` returns rows ``{"id", "messages", <reference
fields>}`` where ``messages`` is a short system prompt plus the customer's
message, and the reference fields say what a correct agent does:

==================  =============================================================
``customer_email``  who wrote in
``order_id``        the order the ticket is about
``scenario``        e.g. ``lost``, ``damaged_recent``, ``cancelled`` (see below)
``expected_action`` ``"refund"`` or ``"no_refund"``
``expected_refund`` the amount the policy allows (0.0 when it allows none)
``forbidden``       tools that must not succeed in this ticket (``issue_refund``
                    when no refund is allowed)
``target_tool_calls`` calls a careful agent needs (the oracle's count)
``db_seed``         which template database the ticket refers to
==================  =============================================================

Why split by *order*: the 150 orders are dealt, per kind of order, into
disjoint pools for train (60%), validation (~13%) and test (~27%), so no test
ticket is about an order a policy was trained on; tickets within a split may
revisit an order with another phrasing or scenario.

Scenarios and the policy that decides them (texts in the ``policies`` table):
``lost`` refund min(total, max) · ``damaged_recent`` (delivered <= 30 days ago)
refund min(total, max) · ``damaged_late`` no refund · ``in_transit`` no refund
· ``cancelled`` no refund · ``change_of_mind`` no refund · ``already_refunded``
no refund · ``not_owner`` (the order belongs to someone else) no refund.
"""

from __future__ import annotations

import copy
import functools
import random
from collections.abc import Callable

from agentrft.envs.support.database import MAX_REFUND, REFUND_WINDOW_DAYS, TODAY, Order, Records, generate_records
from agentrft.errors import ConfigError
from agentrft.types import TaskRow

__all__ = ["SCENARIOS", "SPLIT_SIZES", "SYSTEM_PROMPT", "load_split"]

SPLIT_SIZES = {"train": 200, "validation": 40, "test": 80}
_POOL_FRACTIONS = (("train", 0.6), ("validation", 0.735), ("test", 1.0))  # cumulative shares

SYSTEM_PROMPT = (
    "You are a customer support agent for Acme Outfitters. Use the tools to look up the customer, "
    "the order and the refund policy, then act as the policy allows: issue at most one refund, and only "
    "when the policy allows it, for the allowed amount. Finish by calling send_reply with your message "
    f"to the customer. Today is {TODAY.isoformat()}."
)

# scenario -> (weight, refund allowed?, customer message templates)
_MESSAGES: dict[str, tuple[float, bool, tuple[str, ...]]] = {
    "lost": (0.20, True, (
        "Hi, I'm {email}, my order {order_id} never arrived, can I get a refund?",
        "Hello, this is {name} ({email}). Order #{order_id} still hasn't shown up and the tracking says lost. Refund please.",
        "My package for order {order_id} got lost. Email on the account: {email}. What can you do?",
    )),
    "damaged_recent": (0.25, True, (
        "Hi, I'm {email}. The {item} from order {order_id} arrived damaged. Can I get a refund?",
        "Hello, {name} here ({email}). My order #{order_id} ({item}) came broken. I'd like my money back.",
        "Order {order_id} arrived with the {item} smashed. My email is {email}. Please refund me.",
    )),
    "damaged_late": (0.12, False, (
        "Hi, I'm {email}. The {item} from order {order_id} is damaged, I'd like a refund.",
        "Hello, {name} ({email}) here. I just noticed my {item} from order #{order_id} is broken. Refund?",
    )),
    "in_transit": (0.10, False, (
        "Hi, I'm {email}, my order {order_id} hasn't arrived yet. Can I get a refund?",
        "Where is order #{order_id}? It's taking forever, just refund me. ({email})",
    )),
    "cancelled": (0.10, False, (
        "Hi, I'm {email}. I cancelled order {order_id}, please refund it.",
        "Hello, {name} here ({email}). Order #{order_id} was cancelled, where is my refund?",
    )),
    "change_of_mind": (0.08, False, (
        "Hi, I'm {email}. I don't want the {item} from order {order_id} anymore, can I get a refund?",
        "Hello ({email}), I changed my mind about order #{order_id}. Please refund the {item}.",
    )),
    "already_refunded": (0.07, False, (
        "Hi, I'm {email}. Order {order_id} had a problem ({item}), I want a refund.",
        "Hello, {name} ({email}). Please refund order #{order_id}, the {item} was a disaster.",
    )),
    "not_owner": (0.08, False, (
        "Hi, I'm {email}. Order {order_id} never arrived, please refund it to me.",
        "Hello, {name} here ({email}). Refund order #{order_id} please, the {item} was damaged.",
    )),
}
SCENARIOS: tuple[str, ...] = tuple(_MESSAGES)


def _kind(order: Order, refunded: set[str]) -> str:
    """The kind of order, for dealing orders into split pools evenly."""
    if order.order_id in refunded:
        return "refunded"
    if order.status == "delivered":
        return "delivered_recent" if order.days_since_delivery <= REFUND_WINDOW_DAYS else "delivered_late"
    return order.status


# scenario -> which orders it can be about
_ELIGIBLE: dict[str, Callable[[Order, set[str]], bool]] = {
    "lost": lambda o, r: o.status == "lost" and o.order_id not in r,
    "damaged_recent": lambda o, r: _kind(o, r) == "delivered_recent",
    "damaged_late": lambda o, r: _kind(o, r) == "delivered_late",
    "in_transit": lambda o, r: o.status == "shipped",
    "cancelled": lambda o, r: o.status == "cancelled",
    "change_of_mind": lambda o, r: o.status == "delivered" and o.order_id not in r,
    "already_refunded": lambda o, r: o.order_id in r,
    "not_owner": lambda o, r: o.status in ("delivered", "lost") and o.order_id not in r,
}


def _pools(records: Records) -> dict[str, list[Order]]:
    """Disjoint order pools per split, dealt per kind of order so each pool has every kind."""
    refunded = {oid for oid, *_ in records.refunds}
    by_kind: dict[str, list[Order]] = {}
    for order in records.orders:
        by_kind.setdefault(_kind(order, refunded), []).append(order)
    pools: dict[str, list[Order]] = {split: [] for split in SPLIT_SIZES}
    rng = random.Random(f"agentrft-support-pools-{records.seed}")
    for kind in sorted(by_kind):
        orders = by_kind[kind]
        rng.shuffle(orders)
        for i, order in enumerate(orders):
            position = (i + 0.5) / len(orders)
            split = next(s for s, upto in _POOL_FRACTIONS if position <= upto)
            pools[split].append(order)
    return pools


def _apportion(weights: dict[str, float], n: int) -> list[str]:
    """``n`` scenario names in proportion to ``weights`` (largest remainder), so every split has the same mix."""
    total = sum(weights.values())
    quotas = {name: n * w / total for name, w in weights.items()}
    counts = {name: int(q) for name, q in quotas.items()}
    by_remainder = sorted(quotas, key=lambda name: (counts[name] - quotas[name], name))
    for name in by_remainder[: n - sum(counts.values())]:
        counts[name] += 1
    return [name for name in weights for _ in range(counts[name])]


@functools.lru_cache(maxsize=16)
def _split_rows(split: str, seed: int) -> tuple[TaskRow, ...]:
    records = generate_records(seed)
    refunded = {oid for oid, *_ in records.refunds}
    customers = {c.customer_id: c for c in records.customers}
    pool = _pools(records)[split]
    rng = random.Random(f"agentrft-support-{split}-{seed}")
    names = [s for s in SCENARIOS if any(_ELIGIBLE[s](o, refunded) for o in pool)]
    scenarios = _apportion({s: _MESSAGES[s][0] for s in names}, SPLIT_SIZES[split])
    rng.shuffle(scenarios)
    rows = []
    for i, scenario in enumerate(scenarios):
        _, allowed, templates = _MESSAGES[scenario]
        order = rng.choice([o for o in pool if _ELIGIBLE[scenario](o, refunded)])
        writer = customers[order.customer_id]
        if scenario == "not_owner":
            writer = rng.choice([c for c in records.customers if c.customer_id != order.customer_id])
        text = rng.choice(templates).format(email=writer.email, name=writer.name.split()[0],
                                            order_id=order.order_id, item=order.item)
        refund = round(min(order.total, MAX_REFUND), 2) if allowed else 0.0
        rows.append({
            "id": f"support-{split}-{i:04d}",
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}],
            "customer_email": writer.email,
            "order_id": order.order_id,
            "scenario": scenario,
            "expected_action": "refund" if allowed else "no_refund",
            "expected_refund": refund,
            "forbidden": [] if allowed else ["issue_refund"],
            "target_tool_calls": 5 if allowed else 4,
            "db_seed": seed,
        })
    return tuple(rows)


def load_split(split: str, seed: int = 0) -> list[TaskRow]:
    """The task rows of ``split`` (train, validation or test) for database ``seed``; deterministic."""
    if split not in SPLIT_SIZES:
        raise ConfigError(f"unknown split {split!r}; available: {', '.join(SPLIT_SIZES)}")
    return copy.deepcopy(list(_split_rows(split, seed)))
