"""Guardrails: each rule refuses with GUARDRAIL before the tool runs, in the executor and on its own."""

from __future__ import annotations

import threading

import pytest
from pydantic import ValidationError

from agentrft.errors import ConfigError
from agentrft.tools import FunctionTool, ToolExecutor, ToolFailure, ToolLimits
from agentrft.tools.guardrails import GuardrailConfig, Guardrails, count_guardrail_violations
from agentrft.types import ToolCall, ToolCallRecord, ToolError, ToolErrorKind, Trajectory


class Shop:
    """Tools that record every real run, so refused calls can be shown not to have run."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, dict]] = []
        self.fail_next_refund = False
        self._lock = threading.Lock()

    def lookup(self, order_id: str) -> str:
        """Look up an order.

        Args:
            order_id: the order.
        """
        with self._lock:
            self.runs.append(("lookup", {"order_id": order_id}))
        return f"order {order_id}"

    def issue_refund(self, order_id: str, amount: float) -> str:
        """Refund an order.

        Args:
            order_id: the order.
            amount: dollars.
        """
        with self._lock:
            if self.fail_next_refund:
                self.fail_next_refund = False
                raise ToolFailure(ToolErrorKind.TOOL_ERROR, "no such order")
            self.runs.append(("issue_refund", {"order_id": order_id, "amount": amount}))
        return f"refunded {amount}"

    def delete_account(self) -> str:
        """Delete the customer's account."""
        self.runs.append(("delete_account", {}))
        return "deleted"


def make_executor(shop: Shop, config: dict | None = None, item: dict | None = None, checks=None,
                  max_calls: int = 32) -> ToolExecutor:
    tools = [FunctionTool(m) for m in (shop.lookup, shop.issue_refund, shop.delete_account)]
    guardrails = None if config is None and checks is None else Guardrails(GuardrailConfig(**(config or {})), checks)
    return ToolExecutor(tools, ToolLimits(max_calls=max_calls), trace_id="t", item=item or {}, guardrails=guardrails)


def refund(amount: float = 10.0, order: str = "1042") -> ToolCall:
    return ToolCall("issue_refund", {"order_id": order, "amount": amount})


def kinds(records: list[ToolCallRecord]) -> list[str | None]:
    return [r.error.kind.value if r.error else None for r in records]


# -- config -----------------------------------------------------------------------------------
def test_config_rejects_unknown_keys_negative_limits_and_bad_schemas():
    with pytest.raises(ValidationError, match="extra"):
        GuardrailConfig(allowed_tool=["lookup"])  # misspelt
    with pytest.raises(ValidationError, match=">= 0"):
        GuardrailConfig(max_calls_per_tool={"lookup": -1})
    with pytest.raises(ValidationError, match="invalid JSON schema"):
        GuardrailConfig(argument_constraints={"issue_refund": {"amount": {"maximum": "a lot"}}})
    with pytest.raises(ConfigError, match="not callable"):
        Guardrails(argument_checks={"issue_refund": 3})  # type: ignore[dict-item]
    # A plain mapping is validated into the config (what a YAML file gives).
    assert Guardrails({"max_calls_per_tool": {"lookup": 2}}).config.max_calls_per_tool == {"lookup": 2}


def test_without_guardrails_nothing_changes():
    shop = Shop()
    ex = make_executor(shop)
    assert ex.guardrails is None and ex.guardrail_state is None
    records = ex.execute([refund(), refund(), ToolCall("delete_account", {})], turn=1)
    assert kinds(records) == [None, None, None]
    assert len(shop.runs) == 3


# -- allow-list -------------------------------------------------------------------------------
def test_allow_list_from_config_refuses_other_tools_before_they_run():
    shop = Shop()
    ex = make_executor(shop, {"allowed_tools": ["lookup", "issue_refund"]})
    records = ex.execute([ToolCall("delete_account", {}), ToolCall("lookup", {"order_id": "7"})], turn=1)
    assert kinds(records) == ["guardrail", None]
    assert records[0].result.startswith("Error (guardrail): tool 'delete_account' is not allowed in this task")
    assert "allowed tools: issue_refund, lookup" in records[0].result
    assert shop.runs == [("lookup", {"order_id": "7"})]
    assert ex.guardrail_state.refused["delete_account"] == 1


def test_allow_list_from_the_task_row_narrows_the_config():
    shop = Shop()
    row = {"id": "r1", "allowed_tools": ["lookup"]}
    ex = make_executor(shop, {"allowed_tools": ["lookup", "issue_refund"]}, item=row)
    records = ex.execute([refund(), ToolCall("lookup", {"order_id": "1"})], turn=1)
    assert kinds(records) == ["guardrail", None]
    assert [name for name, _ in shop.runs] == ["lookup"]
    # Row only, no config list; and a config that ignores rows.
    assert Guardrails().start(row).allowed_tools == frozenset({"lookup"})
    assert Guardrails({"allowed_tools_field": None}).start(row).allowed_tools is None
    assert Guardrails({"allowed_tools_field": "tools_ok"}).start({"tools_ok": []}).allowed_tools == frozenset()
    with pytest.raises(ConfigError, match="list of tool names"):
        Guardrails().start({"allowed_tools": "lookup"})


def test_unknown_tools_and_schema_errors_keep_their_own_kinds():
    ex = make_executor(Shop(), {"allowed_tools": ["lookup"]})
    records = ex.execute([ToolCall("nope", {}), ToolCall("lookup", {"order": 1})], turn=1)
    assert kinds(records) == ["unknown_tool", "invalid_arguments"]
    assert sum(ex.guardrail_state.refused.values()) == 0


# -- per-tool caps ------------------------------------------------------------------------------
def test_max_calls_per_tool_counts_admitted_calls_within_and_across_turns():
    shop = Shop()
    ex = make_executor(shop, {"max_calls_per_tool": {"lookup": 2}})
    first = ex.execute([ToolCall("lookup", {"order_id": str(i)}) for i in range(3)], turn=1)
    assert kinds(first) == [None, None, "guardrail"]  # call order decides, not timing
    assert "at most 2 time(s)" in first[2].result
    second = ex.execute([ToolCall("lookup", {"order_id": "9"}), refund()], turn=2)
    assert kinds(second) == ["guardrail", None]  # other tools are not capped
    assert [args for name, args in shop.runs if name == "lookup"] == [{"order_id": "0"}, {"order_id": "1"}]


def test_dangerous_tool_may_succeed_once_and_a_failed_attempt_does_not_use_it_up():
    shop = Shop()
    ex = make_executor(shop, {"max_successful_calls": {"issue_refund": 1}})
    shop.fail_next_refund = True
    assert kinds(ex.execute([refund(order="bad")], turn=1)) == ["tool_error"]
    # Two in one turn: the first is still running when the second is checked, so only one runs.
    both = ex.execute([refund(10.0), refund(20.0)], turn=2)
    assert kinds(both) == [None, "guardrail"]
    assert kinds(ex.execute([refund(30.0)], turn=3)) == ["guardrail"]
    assert [args["amount"] for name, args in shop.runs if name == "issue_refund"] == [10.0]
    state = ex.guardrail_state
    assert (state.admitted["issue_refund"], state.succeeded["issue_refund"], state.running["issue_refund"]) == (2, 1, 0)


def test_a_timed_out_call_counts_as_possibly_succeeded():
    gate = threading.Event()

    def charge(amount: float) -> str:
        """Charge.

        Args:
            amount: dollars.
        """
        gate.wait(5)
        return "charged"

    guardrails = Guardrails({"max_successful_calls": {"charge": 1}})
    ex = ToolExecutor([FunctionTool(charge)], ToolLimits(timeout_s=0.05), guardrails=guardrails)
    try:
        assert kinds(ex.execute([ToolCall("charge", {"amount": 1})], turn=1)) == ["timeout"]
        assert kinds(ex.execute([ToolCall("charge", {"amount": 1})], turn=2)) == ["guardrail"]
    finally:
        gate.set()


# -- argument policies ----------------------------------------------------------------------------
def test_argument_constraints_are_extra_json_schema_checks():
    shop = Shop()
    ex = make_executor(shop, {"argument_constraints": {"issue_refund": {"amount": {"maximum": 100}}}})
    records = ex.execute([refund(150.0), refund(100.0)], turn=1)
    assert kinds(records) == ["guardrail", None]
    assert records[0].result == (
        "Error (guardrail): arguments of 'issue_refund' break a policy: 150.0 is greater than the maximum of 100 "
        "(at $.amount)"
    )
    assert [args["amount"] for _, args in shop.runs] == [100.0]


def test_callable_argument_checks_refuse_and_a_broken_check_fails_closed():
    shop = Shop()

    def only_known_orders(args: dict) -> str | None:
        if args["order_id"] == "explode":
            raise KeyError("boom")
        return None if args["order_id"].startswith("10") else f"order {args['order_id']} is not this customer's"

    ex = make_executor(shop, checks={"issue_refund": only_known_orders})
    records = ex.execute([refund(order="1042"), refund(order="2000"), refund(order="explode")], turn=1)
    assert kinds(records) == [None, "guardrail", "guardrail"]
    assert records[1].result == "Error (guardrail): arguments of 'issue_refund' break a policy: order 2000 is not this customer's"
    assert "argument check of 'issue_refund' failed (KeyError" in records[2].result
    assert [args["order_id"] for _, args in shop.runs] == ["1042"]


def test_refused_calls_still_use_the_call_budget():
    shop = Shop()
    ex = make_executor(shop, {"allowed_tools": ["lookup"]}, max_calls=2)
    records = ex.execute([ToolCall("delete_account", {}), refund(), ToolCall("lookup", {"order_id": "1"})], turn=1)
    assert kinds(records) == ["guardrail", "guardrail", "budget_exceeded"]  # 2 attempts used the budget
    assert ex.calls_made == 3 and shop.runs == []


# -- check() on its own, and counting -----------------------------------------------------------------
def test_check_is_usable_without_an_executor():
    guardrails = Guardrails({"max_calls_per_tool": {"issue_refund": 1}})
    state = guardrails.start({})
    assert guardrails.check(refund(), state) is None
    state.admit(refund())
    error = guardrails.check(refund(), state)
    assert isinstance(error, ToolError) and error.kind == ToolErrorKind.GUARDRAIL


def test_count_guardrail_violations_counts_executor_and_tool_refusals():
    shop = Shop()
    ex = make_executor(shop, {"allowed_tools": ["lookup", "issue_refund"]})
    traj = Trajectory(task_id="t", messages=[])
    traj.tool_calls += ex.execute([ToolCall("delete_account", {}), ToolCall("lookup", {"order_id": "1"})], turn=1)
    # A tool may refuse by itself with ToolFailure(GUARDRAIL); that counts as well.
    own = ToolCallRecord(refund(), turn=2, result="Error (guardrail): one refund per ticket",
                         error=ToolError(ToolErrorKind.GUARDRAIL, "one refund per ticket"))
    traj.tool_calls.append(own)
    assert count_guardrail_violations(traj) == 2
    assert count_guardrail_violations(Trajectory.from_dict(traj.to_dict())) == 2  # survives JSONL
    assert count_guardrail_violations(Trajectory(task_id="t", messages=[])) == 0
