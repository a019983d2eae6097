"""SupportEnv: one customer-support ticket against a private copy of the shop database.

What: each rollout copies the seeded template database (see
:mod:`agentrft.envs.support.database`) to a temporary file, and its public
methods are the agent's tools: look up a customer, list and read orders, read
the refund policy, issue a refund, run read-only SQL, and ``send_reply``, which
answers the customer and ends the episode. :meth:`SupportEnv.close` deletes the
copy.

Why the guardrails live here and not in the prompt:

* ``issue_refund`` writes a real row and allows **one** refund per rollout; a
  second call is refused with ``GUARDRAIL``, so a policy that sprays refunds
  cannot get lucky. Whether a refund was *allowed* is the grader's business,
  not the tool's: the tool only checks facts (the order exists, the amount is
  positive and at most the order total).
* ``sql_query`` runs through :class:`~agentrft.envs.support.readonly_sql.ReadOnlySql`:
  a second connection opened with ``mode=ro`` and ``PRAGMA query_only``,
  behind an SQLite authorizer that allows only reads (SELECT, READ,
  whitelisted functions, a few read-only PRAGMAs) -- three independent
  locks, so a flaw in one (say, an authorizer action code we forgot) still
  cannot write to the database -- and under :class:`SqlLimits`: the length
  of any value, the size of the query and of its program, a wall-time
  deadline, and the rows and characters of the reply.

Concurrency: the calls of one assistant turn run in parallel worker threads,
so both connections are opened with ``check_same_thread=False`` and every use
goes through one lock per environment.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from datetime import date
from pathlib import Path
from typing import Any

from agentrft.envs.support.database import TODAY, copy_template
from agentrft.envs.support.readonly_sql import ReadOnlySql, SqlLimits
from agentrft.tools.base import ToolFailure
from agentrft.tools.environment import Environment
from agentrft.types import TaskRow, ToolErrorKind

__all__ = ["SqlLimits", "SupportEnv", "normalize_order_id"]

class SupportEnv(Environment):
    """A support desk for one ticket: tools over a private SQLite copy of the shop.

    Args of the constructor (not tools): ``seed`` picks the template database;
    ``sql_limits`` bounds ``sql_query`` (time, value sizes, rows; see :class:`SqlLimits`).
    """

    def __init__(self, seed: int = 0, sql_limits: SqlLimits | None = None) -> None:
        self._seed = seed
        self.sql_limits = sql_limits or SqlLimits()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._sql: ReadOnlySql | None = None
        self.db_path: Path | None = None
        """The rollout's private database file (deleted by :meth:`close`)."""
        self.refunds_issued: list[dict[str, Any]] = []
        """Refunds written by this rollout, as ``{refund_id, order_id, amount, reason}``."""
        self.reply: str | None = None
        """The message passed to ``send_reply``, once sent."""

    # -- lifecycle ---------------------------------------------------------------------
    def setup(self, row: TaskRow) -> None:
        self._seed = int(row.get("db_seed", self._seed))
        self.db_path = copy_template(self._seed)
        self._conn = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._sql = ReadOnlySql(self.db_path, self.sql_limits)

    def close(self) -> None:
        with self._lock:
            if self._sql is not None:
                self._sql.close()
            if self._conn is not None:
                self._conn.close()
            self._conn, self._sql = None, None
            if self.db_path is not None:
                self.db_path.unlink(missing_ok=True)

    # -- tools -------------------------------------------------------------------------
    def lookup_customer(self, email: str) -> str:
        """Find a customer by email address.

        Args:
            email: the customer's email address, e.g. "jane.doe@example.com".
        """
        row = self._one("SELECT * FROM customers WHERE email = ? COLLATE NOCASE", (email.strip(),))
        if row is None:
            raise ToolFailure(ToolErrorKind.TOOL_ERROR, f"no customer with email {email!r}")
        return _json(dict(row))

    def list_orders(self, customer_id: str) -> str:
        """List a customer's orders, newest first.

        Args:
            customer_id: the customer's id from lookup_customer, e.g. "C007".
        """
        customer_id = customer_id.strip()
        if self._one("SELECT 1 FROM customers WHERE customer_id = ?", (customer_id,)) is None:
            raise ToolFailure(ToolErrorKind.TOOL_ERROR, f"no customer with id {customer_id!r}")
        rows = self._all(
            "SELECT order_id, item, total, status, order_date FROM orders WHERE customer_id = ? "
            "ORDER BY order_date DESC, order_id DESC",
            (customer_id,),
        )
        return _json([dict(r) for r in rows])

    def get_order(self, order_id: str) -> str:
        """Get one order with its shipment status and any refunds already recorded.

        Args:
            order_id: the order number, e.g. "1042".
        """
        order_id = normalize_order_id(order_id)
        order = self._one("SELECT * FROM orders WHERE order_id = ?", (order_id,))
        if order is None:
            raise ToolFailure(ToolErrorKind.TOOL_ERROR, f"no order {order_id!r}")
        shipment = self._one(
            "SELECT carrier, status, shipped_date, delivered_date FROM shipments WHERE order_id = ?", (order_id,)
        )
        refunds = self._all("SELECT refund_id, amount, reason, created_at FROM refunds WHERE order_id = ?", (order_id,))
        out = dict(order)
        if shipment is None:
            out["shipment"] = None
        else:
            out["shipment"] = dict(shipment)
            delivered = shipment["delivered_date"]
            out["shipment"]["days_since_delivery"] = (
                None if delivered is None else (TODAY - date.fromisoformat(delivered)).days
            )
        out["refunds"] = [dict(r) for r in refunds]
        out["today"] = TODAY.isoformat()
        return _json(out)

    def get_policy(self, topic: str) -> str:
        """Read the support policies about a topic (e.g. "refund", "damaged", "lost", "cancelled").

        Args:
            topic: one or more keywords; every policy mentioning any of them is returned.
        """
        words = {w.rstrip("s") for w in re.findall(r"[a-z]{3,}", topic.lower())}
        policies = self._all("SELECT topic, title, text FROM policies ORDER BY rowid", ())
        found = [
            dict(p) for p in policies
            if any(w in f"{p['topic']} {p['title']} {p['text']}".lower() for w in words)
        ]
        if not found:
            topics = ", ".join(p["topic"] for p in policies)
            return f"No policy matches {topic!r}. Policy topics: {topics}."
        return _json(found)

    def issue_refund(self, order_id: str, amount: float, reason: str) -> str:
        """Refund an order to the customer's original payment method. At most one refund per ticket.

        Args:
            order_id: the order to refund, e.g. "1042".
            amount: the refund in dollars; at most the order total.
            reason: a short reason, e.g. "lost shipment".
        """
        order_id = normalize_order_id(order_id)
        with self._lock:
            conn = self._open_conn()
            if self.refunds_issued:
                done = self.refunds_issued[0]
                raise ToolFailure(
                    ToolErrorKind.GUARDRAIL,
                    f"a refund was already issued in this ticket (order {done['order_id']}, "
                    f"${done['amount']:.2f}); only one refund per ticket is allowed",
                )
            order = conn.execute("SELECT total FROM orders WHERE order_id = ?", (order_id,)).fetchone()
            if order is None:
                raise ToolFailure(ToolErrorKind.TOOL_ERROR, f"no order {order_id!r}")
            amount = round(float(amount), 2)
            if not amount > 0:
                raise ToolFailure(ToolErrorKind.TOOL_ERROR, f"refund amount must be positive, got {amount}")
            if amount > order["total"] + 1e-9:
                raise ToolFailure(
                    ToolErrorKind.TOOL_ERROR,
                    f"refund amount ${amount:.2f} exceeds the order total ${order['total']:.2f}",
                )
            reason = reason.strip() or "unspecified"
            cursor = conn.execute(
                "INSERT INTO refunds (order_id, amount, reason, created_at) VALUES (?, ?, ?, ?)",
                (order_id, amount, reason, TODAY.isoformat()),
            )
            refund = {"refund_id": cursor.lastrowid, "order_id": order_id, "amount": amount, "reason": reason}
            self.refunds_issued.append(refund)
        return _json({"status": "refunded", **refund})

    def sql_query(self, query: str) -> str:
        """Run one read-only SQL SELECT on the shop database (tables: customers, orders, shipments,
        refunds, policies). Writes are refused, long queries aborted, results capped.

        Args:
            query: a single SELECT statement.
        """
        with self._lock:
            if self._sql is None:
                raise ToolFailure(ToolErrorKind.TOOL_ERROR, "the database is closed")
            return self._sql.query(query)

    def send_reply(self, message: str) -> str:
        """Send the final reply to the customer. This closes the ticket and ends the conversation.

        Args:
            message: the reply, telling the customer what was done and why.
        """
        if not message.strip():
            raise ToolFailure(ToolErrorKind.INVALID_ARGUMENTS, "the reply is empty")
        with self._lock:
            if self.reply is not None:
                raise ToolFailure(ToolErrorKind.GUARDRAIL, "a reply was already sent; the ticket is closed")
            self.reply = message
            self.done = True
        return "reply sent; ticket closed"

    # -- helpers -----------------------------------------------------------------------
    def _open_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ToolFailure(ToolErrorKind.TOOL_ERROR, "the database is closed")
        return self._conn

    def _one(self, sql: str, params: tuple[Any, ...]) -> sqlite3.Row | None:
        with self._lock:
            return self._open_conn().execute(sql, params).fetchone()

    def _all(self, sql: str, params: tuple[Any, ...]) -> list[sqlite3.Row]:
        with self._lock:
            return self._open_conn().execute(sql, params).fetchall()


def normalize_order_id(order_id: str) -> str:
    """Accept "#1042" and " 1042 " for "1042"."""
    return order_id.strip().lstrip("#").strip()


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
