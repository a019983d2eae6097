"""The support desk's SQLite database: schema, seeded generator, per-process template.

What: :func:`generate_records` draws a small, fully deterministic shop from a
seed (about 50 customers, 150 orders with shipments, a few historical refunds
and the refund policies); :func:`build_database` writes it to an SQLite file;
:func:`template_path` builds that file once per process and seed, and every
rollout copies it (:func:`copy_template`) so rollouts never see each other's
writes.

Why a real database rather than Python dicts: the agent's side effects (a
refund) are rows whose final state the tests can inspect, and the read-only
``sql_query`` tool needs an engine whose authorizer we can rely on.

Dates are relative to a fixed :data:`TODAY` so that "delivered 12 days ago"
means the same thing in every run, whatever the wall clock says.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import sqlite3
import tempfile
import threading
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

__all__ = [
    "MAX_REFUND",
    "REFUND_WINDOW_DAYS",
    "TODAY",
    "Customer",
    "Order",
    "Records",
    "build_database",
    "copy_template",
    "generate_records",
    "template_path",
]

TODAY = date(2024, 7, 1)
"""The desk's "today": every date in the database and every window is relative to it."""
REFUND_WINDOW_DAYS = 30
"""Damaged items may be refunded when delivered this many days ago or fewer."""
MAX_REFUND = 500.0
"""The largest refund issued for one order; larger orders are refunded this much."""

SCHEMA = """
CREATE TABLE customers (
    customer_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT NOT NULL UNIQUE,
    member_since TEXT NOT NULL
);
CREATE TABLE orders (
    order_id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL REFERENCES customers(customer_id),
    item TEXT NOT NULL,
    total REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('delivered', 'shipped', 'lost', 'cancelled')),
    order_date TEXT NOT NULL
);
CREATE TABLE shipments (
    shipment_id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL UNIQUE REFERENCES orders(order_id),
    carrier TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('in_transit', 'delivered', 'lost')),
    shipped_date TEXT NOT NULL,
    delivered_date TEXT
);
CREATE TABLE refunds (
    refund_id INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id TEXT NOT NULL REFERENCES orders(order_id),
    amount REAL NOT NULL,
    reason TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE policies (
    topic TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    text TEXT NOT NULL
);
"""

POLICIES: tuple[tuple[str, str, str], ...] = (
    ("damaged_items", "Damaged items",
     f"Refunds are allowed for items that arrived damaged, if the order was delivered {REFUND_WINDOW_DAYS} days "
     f"ago or fewer (counted to today, {TODAY.isoformat()}). Damaged items delivered longer ago get no refund."),
    ("lost_shipments", "Lost shipments",
     "Orders whose shipment the carrier reports as lost are refunded in full (up to the maximum refund)."),
    ("in_transit", "Orders in transit",
     "Orders that are shipped and still in transit are not lost: no refund; ask the customer to wait for delivery."),
    ("cancelled_orders", "Cancelled orders",
     "No refunds for cancelled orders: they were never charged."),
    ("change_of_mind", "Change of mind",
     "Refunds are only for damaged items or lost shipments. No refund for a change of mind or unwanted items."),
    ("refund_limit", "Maximum refund",
     f"The maximum refund for one order is ${MAX_REFUND:.2f}. Orders with a larger total are refunded "
     f"${MAX_REFUND:.2f}. The refund amount is otherwise the order total."),
    ("duplicate_refunds", "One refund per order",
     "An order that already has a refund recorded cannot be refunded again."),
    ("verification", "Account verification",
     "Only act on orders that belong to the customer who contacted us (matching customer_id). "
     "Never refund another customer's order."),
)

_FIRST = ("jane", "john", "maria", "li", "ahmed", "sofia", "lucas", "emma", "noah", "olivia", "mateo", "aisha",
          "yuki", "ivan", "chloe", "omar", "priya", "diego", "hana", "felix")
_LAST = ("doe", "smith", "garcia", "chen", "khan", "rossi", "muller", "novak", "silva", "kim", "patel", "dubois",
         "ito", "larsen", "moreau")
_ITEMS = (
    ("wireless headphones", 40, 220), ("hiking boots", 60, 190), ("espresso machine", 120, 780),
    ("yoga mat", 15, 60), ("desk lamp", 20, 90), ("winter jacket", 80, 350), ("smart watch", 150, 650),
    ("backpack", 30, 140), ("office chair", 140, 720), ("bluetooth speaker", 25, 180), ("tent", 90, 560),
    ("road bike helmet", 35, 160),
)
_CARRIERS = ("UPS", "FedEx", "DHL", "USPS")
# status -> weight among the generated orders
_STATUS_WEIGHTS = {"delivered": 0.58, "shipped": 0.14, "lost": 0.14, "cancelled": 0.14}


@dataclass(frozen=True)
class Customer:
    customer_id: str
    name: str
    email: str
    member_since: str


@dataclass(frozen=True)
class Order:
    order_id: str
    customer_id: str
    item: str
    total: float
    status: str
    order_date: str
    carrier: str | None = None
    shipment_status: str | None = None
    shipped_date: str | None = None
    delivered_date: str | None = None

    @property
    def days_since_delivery(self) -> int | None:
        if self.delivered_date is None:
            return None
        return (TODAY - date.fromisoformat(self.delivered_date)).days


@dataclass(frozen=True)
class Records:
    """Everything in a freshly built database (refunds as (order_id, amount, reason, created_at))."""

    seed: int
    customers: tuple[Customer, ...]
    orders: tuple[Order, ...]
    refunds: tuple[tuple[str, float, str, str], ...]


def generate_records(seed: int = 0, n_customers: int = 50, n_orders: int = 150) -> Records:
    """The shop drawn from ``seed``: same seed, same records (a pure function)."""
    rng = random.Random(f"agentrft-support-db-{seed}")
    names = rng.sample([(f, l) for f in _FIRST for l in _LAST], n_customers)
    customers = tuple(
        Customer(
            customer_id=f"C{i + 1:03d}",
            name=f"{first.title()} {last.title()}",
            email=f"{first}.{last}@example.com",
            member_since=(TODAY - timedelta(days=rng.randint(60, 2000))).isoformat(),
        )
        for i, (first, last) in enumerate(names)
    )
    statuses, weights = zip(*_STATUS_WEIGHTS.items())
    orders: list[Order] = []
    refunds: list[tuple[str, float, str, str]] = []
    for i in range(n_orders):
        item, low, high = rng.choice(_ITEMS)
        order = _draw_order(
            rng,
            order_id=str(1001 + i),
            customer_id=rng.choice(customers).customer_id,
            item=item,
            total=round(rng.uniform(low, high), 2),
            status=rng.choices(statuses, weights)[0],
        )
        orders.append(order)
        # A few delivered or lost orders were refunded before (a duplicate-refund trap).
        if order.status in ("delivered", "lost") and rng.random() < 0.15:
            when = TODAY - timedelta(days=rng.randint(1, 5))
            reason = "damaged item" if order.status == "delivered" else "lost shipment"
            refunds.append((order.order_id, round(min(order.total, MAX_REFUND), 2), reason, when.isoformat()))
    return Records(seed, customers, tuple(orders), tuple(refunds))


def _draw_order(rng: random.Random, *, order_id: str, customer_id: str, item: str, total: float, status: str) -> Order:
    carrier = rng.choice(_CARRIERS)
    if status == "cancelled":
        ordered = TODAY - timedelta(days=rng.randint(2, 90))
        return Order(order_id, customer_id, item, total, status, ordered.isoformat())
    if status == "shipped":  # recent, still on its way
        ordered = TODAY - timedelta(days=rng.randint(2, 8))
        shipped = ordered + timedelta(days=1)
        return Order(order_id, customer_id, item, total, status, ordered.isoformat(), carrier, "in_transit",
                     shipped.isoformat())
    if status == "lost":
        ordered = TODAY - timedelta(days=rng.randint(20, 90))
        shipped = ordered + timedelta(days=rng.randint(1, 3))
        return Order(order_id, customer_id, item, total, status, ordered.isoformat(), carrier, "lost",
                     shipped.isoformat())
    # delivered: between 1 and ~80 days ago, so about a third are inside the refund window
    delivered = TODAY - timedelta(days=rng.randint(1, 80))
    shipped = delivered - timedelta(days=rng.randint(2, 7))
    ordered = shipped - timedelta(days=rng.randint(1, 3))
    return Order(order_id, customer_id, item, total, status, ordered.isoformat(), carrier, "delivered",
                 shipped.isoformat(), delivered.isoformat())


def build_database(path: str | os.PathLike[str], seed: int = 0) -> Records:
    """Write the seeded database to ``path`` (which must not exist); returns what was written."""
    records = generate_records(seed)
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.executescript(SCHEMA)
            conn.executemany("INSERT INTO customers VALUES (?, ?, ?, ?)",
                             [(c.customer_id, c.name, c.email, c.member_since) for c in records.customers])
            conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?)",
                             [(o.order_id, o.customer_id, o.item, o.total, o.status, o.order_date)
                              for o in records.orders])
            conn.executemany(
                "INSERT INTO shipments VALUES (?, ?, ?, ?, ?, ?)",
                [(f"S{o.order_id}", o.order_id, o.carrier, o.shipment_status, o.shipped_date, o.delivered_date)
                 for o in records.orders if o.shipment_status is not None],
            )
            conn.executemany("INSERT INTO refunds (order_id, amount, reason, created_at) VALUES (?, ?, ?, ?)",
                             records.refunds)
            conn.executemany("INSERT INTO policies VALUES (?, ?, ?)", POLICIES)
    finally:
        conn.close()
    return records


_templates: dict[int, Path] = {}
_templates_lock = threading.Lock()
_template_dir: Path | None = None


def template_path(seed: int = 0) -> Path:
    """The template database of ``seed``, built on first use in a per-process temporary folder.

    Per process rather than in a shared cache: it takes milliseconds to build,
    and a stale file from an older generator can then never be picked up.
    Rollouts must not open it for writing; they work on :func:`copy_template`.
    """
    global _template_dir
    with _templates_lock:
        if seed not in _templates:
            if _template_dir is None:
                _template_dir = Path(tempfile.mkdtemp(prefix="agentrft-support-"))
                atexit.register(shutil.rmtree, _template_dir, ignore_errors=True)
            path = _template_dir / f"template-{seed}.sqlite"
            partial = path.with_suffix(".partial")
            partial.unlink(missing_ok=True)
            build_database(partial, seed)
            partial.replace(path)  # readers never see a half-written template
            _templates[seed] = path
        return _templates[seed]


def copy_template(seed: int = 0) -> Path:
    """A fresh private copy of the template of ``seed`` (the caller deletes it)."""
    source = template_path(seed)
    fd, name = tempfile.mkstemp(prefix="support-rollout-", suffix=".sqlite", dir=source.parent)
    os.close(fd)
    shutil.copyfile(source, name)
    return Path(name)
