"""The support env: seeded database, per-rollout isolation, SQL guardrails, refund guardrail, grader, oracles."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from agentrft.envs.support import (
    MAX_REFUND,
    SupportEnv,
    build_database,
    env_spec,
    grade,
    load_split,
    oracle,
    oracle_conversation,
    play,
)
from agentrft.envs.support.database import template_path
from agentrft.envs.support.env import SqlLimits
from agentrft.tools.base import ToolFailure
from agentrft.types import StopReason, ToolCall, ToolErrorKind, Trajectory

TABLES = ("customers", "orders", "shipments", "refunds", "policies")


def dump(path: Path) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(path)
    try:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in TABLES}
    finally:
        conn.close()


def db_refunds(path: Path) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT order_id, amount, reason FROM refunds ORDER BY refund_id").fetchall()
    finally:
        conn.close()


def row_of(scenario: str, split: str = "validation") -> dict:
    return next(r for r in load_split(split) if r["scenario"] == scenario)


@pytest.fixture()
def env():
    e = SupportEnv(sql_limits=SqlLimits(time_limit_s=0.2, max_rows=10))
    e.setup(row_of("lost"))
    yield e
    e.close()


def script(*calls: tuple[str, dict], final_text: str | None = None) -> list[dict]:
    """Assistant turns, one call each (a hand-written policy for the grader tests)."""
    turns = [{"role": "assistant", "content": "", "tool_calls": [ToolCall(n, a, id=f"c{i}").to_openai()]}
             for i, (n, a) in enumerate(calls)]
    if final_text is not None:
        turns.append({"role": "assistant", "content": final_text})
    return turns


# -- database ------------------------------------------------------------------------------
def test_template_is_deterministic_per_seed(tmp_path):
    build_database(tmp_path / "a.sqlite", seed=0)
    build_database(tmp_path / "b.sqlite", seed=0)
    build_database(tmp_path / "c.sqlite", seed=1)
    a, b, c = (dump(tmp_path / f"{n}.sqlite") for n in "abc")
    assert a == b
    assert a["orders"] != c["orders"]
    assert len(a["customers"]) == 50 and len(a["orders"]) == 150
    assert {o[4] for o in a["orders"]} == {"delivered", "shipped", "lost", "cancelled"}
    assert dump(template_path(0)) == a  # the per-process template is the same database
    assert template_path(0) == template_path(0)  # built once


def test_each_rollout_works_on_its_own_copy():
    row = row_of("lost")
    first, second = SupportEnv(), SupportEnv()
    first.setup(row)
    second.setup(row)
    try:
        assert first.db_path != second.db_path
        before = db_refunds(second.db_path)
        first.issue_refund(row["order_id"], row["expected_refund"], "lost shipment")
        assert db_refunds(first.db_path) == before + [(row["order_id"], row["expected_refund"], "lost shipment")]
        assert db_refunds(second.db_path) == before
        assert db_refunds(template_path(0)) == before
        assert row["order_id"] not in second.sql_query("SELECT order_id FROM refunds WHERE created_at = '2024-07-01'")
    finally:
        first.close()
        second.close()
    assert not first.db_path.exists() and not second.db_path.exists()
    with pytest.raises(ToolFailure, match="closed"):
        first.get_order(row["order_id"])


# -- tools ---------------------------------------------------------------------------------------
def test_lookup_and_order_tools_read_the_database(env):
    row = row_of("lost")
    customer = env.lookup_customer(row["customer_email"].upper())
    assert row["customer_email"] in customer
    order = env.get_order("#" + row["order_id"])
    assert '"status": "lost"' in order and '"carrier"' in order
    orders = json.loads(env.list_orders(json.loads(customer)["customer_id"]))
    assert row["order_id"] in [o["order_id"] for o in orders]
    assert "lost_shipments" in env.get_policy("lost")
    assert "No policy matches" in env.get_policy("xyzzy")
    with pytest.raises(ToolFailure) as e:
        env.lookup_customer("nobody@example.com")
    assert e.value.kind == ToolErrorKind.TOOL_ERROR


def test_only_one_refund_per_rollout(env):
    row = row_of("lost")
    with pytest.raises(ToolFailure) as bad:
        env.issue_refund(row["order_id"], 10_000.0, "too much")  # over the total: refused, not counted
    assert bad.value.kind == ToolErrorKind.TOOL_ERROR and "exceeds the order total" in bad.value.message
    with pytest.raises(ToolFailure, match="no order"):
        env.issue_refund("999999", 1.0, "x")
    before = db_refunds(env.db_path)
    env.issue_refund(row["order_id"], 5.0, "lost shipment")
    with pytest.raises(ToolFailure) as second:
        env.issue_refund(row["order_id"], 5.0, "again")
    assert second.value.kind == ToolErrorKind.GUARDRAIL and "only one refund" in second.value.message
    assert db_refunds(env.db_path) == before + [(row["order_id"], 5.0, "lost shipment")]


def test_send_reply_ends_the_episode(env):
    assert not env.done
    env.send_reply("Done.")
    assert env.done and env.reply == "Done."
    with pytest.raises(ToolFailure) as e:
        env.send_reply("again")
    assert e.value.kind == ToolErrorKind.GUARDRAIL


# -- the read-only SQL tool ------------------------------------------------------------------------
def test_sql_query_reads_and_caps_rows(env):
    out = json.loads(env.sql_query("SELECT order_id, status FROM orders ORDER BY order_id"))
    assert out["columns"] == ["order_id", "status"]
    assert [r[0] for r in out["rows"]] == [str(i) for i in range(1001, 1011)]
    assert "only the first 10 rows" in out["truncated"]
    assert '"cid"' in env.sql_query("PRAGMA table_info(orders)")  # schema PRAGMAs are allowed


@pytest.mark.parametrize("query", [
    "INSERT INTO refunds (order_id, amount, reason, created_at) VALUES ('1001', 1, 'x', '2024-07-01')",
    "UPDATE orders SET total = 0",
    "DELETE FROM refunds",
    "DROP TABLE orders",
    "CREATE TABLE t (x)",
    "ATTACH DATABASE ':memory:' AS other",
    "PRAGMA user_version = 7",
    "PRAGMA journal_mode = WAL",
    "PRAGMA query_only = OFF",
    "SELECT randomblob(1000000)",
])
def test_sql_query_refuses_writes_and_they_never_happen(env, query):
    before = dump(env.db_path)
    with pytest.raises(ToolFailure) as e:
        env.sql_query(query)
    assert e.value.kind == ToolErrorKind.GUARDRAIL
    assert "read-only" in e.value.message
    assert dump(env.db_path) == before
    conn = sqlite3.connect(env.db_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (0,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    finally:
        conn.close()
    assert '"rows": [[150]]' in env.sql_query("SELECT count(*) FROM orders")  # still usable


def test_sql_query_time_limit_aborts_a_huge_cross_join(env):
    start = time.monotonic()
    with pytest.raises(ToolFailure) as e:
        env.sql_query("SELECT count(*) FROM orders a, orders b, orders c, orders d")  # 5e8 rows
    assert time.monotonic() - start < 0.2 + 0.5
    assert e.value.kind == ToolErrorKind.TIMEOUT and "0.2s limit" in e.value.message
    assert '"rows": [[150]]' in env.sql_query("SELECT count(*) FROM orders")  # the handler was reset


def test_sql_query_reports_syntax_errors_and_multiple_statements(env):
    for query in ("SELEC 1", "SELECT 1; DELETE FROM refunds"):
        with pytest.raises(ToolFailure) as e:
            env.sql_query(query)
        assert e.value.kind == ToolErrorKind.TOOL_ERROR
    assert len(db_refunds(env.db_path)) == len(db_refunds(template_path(0)))


# -- tasks ------------------------------------------------------------------------------------
def test_splits_are_seeded_sized_and_disjoint_by_order():
    spec = env_spec()
    assert spec.name == "support" and spec.splits == ("train", "validation", "test")
    rows = {s: spec.load_split(s) for s in spec.splits}
    assert {s: len(r) for s, r in rows.items()} == {"train": 200, "validation": 40, "test": 80}
    assert rows["test"] == load_split("test")  # deterministic
    orders = {s: {r["order_id"] for r in rs} for s, rs in rows.items()}
    assert not orders["train"] & orders["test"] and not orders["train"] & orders["validation"]
    for r in rows["train"]:
        assert r["messages"][0]["role"] == "system" and "send_reply" in r["messages"][0]["content"]
        assert r["order_id"] in r["messages"][1]["content"] and r["customer_email"] in r["messages"][1]["content"]
        assert (r["expected_action"] == "refund") == (r["expected_refund"] > 0) == (not r["forbidden"])
    assert any(r["expected_refund"] == MAX_REFUND for r in rows["train"])  # the cap matters somewhere


# -- grader and oracles -----------------------------------------------------------------------------
def test_oracle_scores_high_and_do_nothing_low_on_validation():
    rows = load_split("validation")
    oracle_grades = [grade(play(r, "oracle"), r) for r in rows]
    nothing_grades = [grade(play(r, "do_nothing"), r) for r in rows]
    assert sum(g.reward for g in oracle_grades) / len(rows) >= 0.9
    assert all(g.sub_rewards["action"] == 1.0 for g in oracle_grades)
    assert sum(g.reward for g in nothing_grades) / len(rows) <= 0.2
    assert set(oracle_grades[0].sub_rewards) == {"action", "reply", "cost"}
    assert not any(g.has_error for g in oracle_grades + nothing_grades)


def test_refund_records_match_the_final_database_state():
    """Grading from tool-call records is sound: they are exactly the rows the rollout wrote."""
    for row in load_split("validation"):
        env = SupportEnv()
        try:
            traj = play(row, "oracle", env=env)
            before = db_refunds(template_path(0))
            written = db_refunds(env.db_path)[len(before):]
        finally:
            env.close()
        recorded = [(c.call.arguments["order_id"], c.call.arguments["amount"], c.call.arguments["reason"])
                    for c in traj.tool_calls if c.call.name == "issue_refund" and c.ok]
        assert written == recorded
        assert len(written) == (1 if row["expected_action"] == "refund" else 0)
        assert traj.stop_reason == StopReason.ENV_DONE


def test_oracle_conversation_is_a_complete_demonstration():
    row = row_of("damaged_recent")
    messages = oracle_conversation(row)
    assert [m["role"] for m in messages[:2]] == ["system", "user"]
    calls = [m["tool_calls"][0]["function"]["name"] for m in messages if m.get("tool_calls")]
    assert calls == ["lookup_customer", "get_order", "get_policy", "issue_refund", "send_reply"]
    for call_msg, result in zip(messages[2::2], messages[3::2]):
        assert result["role"] == "tool" and result["tool_call_id"] == call_msg["tool_calls"][0]["id"]
        assert not result["content"].startswith("Error")
    assert f"{row['expected_refund']:.2f}" in messages[-2]["tool_calls"][0]["function"]["arguments"]
    assert len(oracle(row_of("cancelled"))) == 4  # no issue_refund turn when none is allowed


def _graded(row, *calls, final_text=None):
    traj = play(row, lambda _: script(*calls, final_text=final_text))
    return grade(traj, row)


def test_grader_penalises_forbidden_wrong_and_lazy_actions():
    refund_row, refusal_row = row_of("lost"), row_of("cancelled")
    oid, amount = refund_row["order_id"], refund_row["expected_refund"]
    look = ("get_order", {"order_id": refusal_row["order_id"]})

    forbidden = _graded(refusal_row, look, ("issue_refund", {"order_id": refusal_row["order_id"], "amount": 1.0,
                                                             "reason": "x"}),
                        ("send_reply", {"message": "I've refunded $1.00."}))
    assert forbidden.sub_rewards["action"] == 0.0 and forbidden.sub_rewards["reply"] == 1.0

    wrong_amount = _graded(refund_row, ("issue_refund", {"order_id": oid, "amount": round(amount - 1, 2),
                                                         "reason": "lost"}),
                           ("send_reply", {"message": f"Refund of {amount - 1:.2f} issued."}))
    assert wrong_amount.sub_rewards["action"] == 0.0

    other = next(r for r in load_split("validation") if r["order_id"] != oid and r["expected_action"] == "refund")
    wrong_order = _graded(refund_row, ("issue_refund", {"order_id": other["order_id"],
                                                        "amount": other["expected_refund"], "reason": "lost"}),
                          ("send_reply", {"message": "Refunded."}))
    assert wrong_order.sub_rewards["action"] == 0.0
    assert wrong_order.sub_rewards["reply"] == 0.5  # the reply hides the amount actually refunded

    blind_refusal = _graded(refusal_row, ("send_reply", {"message": "Unfortunately no refund."}))
    assert blind_refusal.sub_rewards["action"] == 0.0  # refusing without reading the order earns nothing

    careful = _graded(refusal_row, look, ("send_reply", {"message": "Unfortunately no refund: it was cancelled."}))
    assert careful.reward == pytest.approx(1.0)

    unclosed = _graded(refusal_row, look, final_text="Unfortunately no refund.")
    assert unclosed.reward == 0.0


def test_grader_cost_term_falls_with_extra_calls():
    row = row_of("cancelled")
    look = ("get_order", {"order_id": row["order_id"]})
    reply = ("send_reply", {"message": "Unfortunately it is not eligible for a refund."})
    extra = [("get_policy", {"topic": "refund"})] * 10
    # target 4 calls, 0 at 4 + EXTRA_CALL_BUDGET = 10 calls; these runs make 2, 6, 8 and 10 calls
    costs = [_graded(row, look, *extra[:k], reply).sub_rewards["cost"] for k in (0, 4, 6, 8)]
    assert costs == pytest.approx([1.0, 4 / 6, 2 / 6, 0.0])


def test_grader_flags_a_bad_row_instead_of_raising():
    g = grade(Trajectory(task_id="x", messages=[]), {"expected_action": "refund"})
    assert g.reward == 0.0
    traj = play(row_of("lost"), "oracle")
    g = grade(traj, {k: v for k, v in row_of("lost").items() if k != "expected_action"})
    assert g.reward == 0.0 and g.errors["sample_parse_error"]


# -- through the real rollout loop ----------------------------------------------------------------
def test_oracle_through_run_episodes(tokenizer):
    from agentrft.models.chat_format import HermesChatFormat
    from agentrft.rollout.episode import RolloutConfig, run_episodes
    from agentrft.rollout.sampler import ScriptedSampler

    chat_format = HermesChatFormat(tokenizer)
    spec = env_spec()
    rows = [row_of("damaged_recent"), row_of("not_owner")]
    # run_episodes advances rollouts in lockstep: one scripted completion per active rollout per turn.
    turns = [oracle(r) for r in rows]
    completions = []
    for k in range(max(map(len, turns))):
        completions += [list(chat_format.assistant_tokens(t[k])) for t in turns if k < len(t)]
    config = RolloutConfig(max_turns=8, max_new_tokens=512, max_total_tokens=16384)
    trajs = run_episodes(rows, spec.make_env, ScriptedSampler(completions), chat_format, config)
    for traj, row in zip(trajs, rows):
        assert traj.stop_reason == StopReason.ENV_DONE, traj.errors
        assert traj.num_tool_errors == 0
        g = spec.grade(traj, row)
        assert g.reward == pytest.approx(1.0), g.sub_rewards
