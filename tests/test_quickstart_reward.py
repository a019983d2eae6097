"""The quickstart's RFT reward: correctness first, fewer calls second, and no credit for skipping the evidence."""

import pytest

from agentrft.envs.finance import load_split
from agentrft.envs.finance.oracles import answer_text
from agentrft.quickstart import cost_aware_reward, read_the_evidence
from agentrft.types import StopReason, ToolCall, ToolCallRecord, ToolError, ToolErrorKind, Trajectory


@pytest.fixture(scope="module")
def row():
    return load_split("validation")[0]


def rollout(row, answer: str, reads: list[str], searches: int = 1, failed_reads: tuple[str, ...] = (),
            stop: StopReason = StopReason.ANSWER) -> Trajectory:
    calls = [ToolCallRecord(ToolCall("search", {"query": row["company"]}, f"s{i}"), turn=i, result="...")
             for i in range(searches)]
    calls += [ToolCallRecord(ToolCall("read", {"doc_id": d}, f"r{i}"), turn=searches + i, result="...") for i, d in enumerate(reads)]
    calls += [ToolCallRecord(ToolCall("read", {"doc_id": d}, f"f{i}"), turn=99, result="unknown",
                             error=ToolError(ToolErrorKind.TOOL_ERROR, "unknown doc_id")) for i, d in enumerate(failed_reads)]
    messages = row["messages"] + [{"role": "assistant", "content": answer}]
    return Trajectory(task_id=row["id"], messages=messages, tool_calls=calls, stop_reason=stop)


def test_read_the_evidence_is_forgiving_about_form_only(row):
    gold = row["gold_doc_id"]
    assert read_the_evidence(rollout(row, "1", [gold.lower()]), row)
    assert read_the_evidence(rollout(row, "1", [f"{gold} | annual report"]), row)
    assert not read_the_evidence(rollout(row, "1", ["10K-NOPE-2020"]), row)
    assert not read_the_evidence(rollout(row, "1", [], failed_reads=(gold,)), row)  # a failed call found nothing


def test_reward_orders_correct_efficient_over_correct_verbose_over_wrong(row):
    grade = cost_aware_reward(cost=0.15, correctness_weight=0.7)
    gold, right = row["gold_doc_id"], answer_text(row)
    efficient = grade(rollout(row, right, [gold]), row)
    verbose = grade(rollout(row, right, ["PR-A", "10K-B", gold], searches=2), row)
    assert efficient.reward == pytest.approx(1.0)
    assert verbose.reward == pytest.approx(0.7 + 0.3 * (1 - 0.15 * 3))
    wrong_efficient = grade(rollout(row, "0.001", [gold]), row)
    wrong_verbose = grade(rollout(row, "0.001", ["PR-A", "10K-B", gold], searches=2), row)
    assert wrong_efficient.reward == pytest.approx(0.3) and wrong_verbose.reward == pytest.approx(0.3 * 0.55)
    assert efficient.reward > verbose.reward > wrong_efficient.reward > wrong_verbose.reward
    assert efficient.sub_rewards["efficiency"] == 1.0


def test_no_efficiency_credit_without_the_evidence(row):
    grade = cost_aware_reward(cost=0.15)
    no_tools = grade(rollout(row, "0.001", [], searches=0), row)
    wrong_doc = grade(rollout(row, "0.001", ["10K-NOPE-2020"]), row)
    assert no_tools.reward == 0.0 and wrong_doc.reward == 0.0
    with pytest.raises(ValueError, match="correctness_weight"):
        cost_aware_reward(0.1, correctness_weight=0.0)


def test_no_efficiency_credit_without_an_answer(row):
    """Reading the gold filing and then calling until max_turns must not beat answering wrongly."""
    grade = cost_aware_reward(cost=0.15)
    gold = row["gold_doc_id"]
    stalled = grade(rollout(row, "", ["PR-A", "10K-B", gold, gold], searches=3, stop=StopReason.MAX_TURNS), row)
    wrong = grade(rollout(row, "0.001", ["PR-A", "10K-B", gold], searches=2), row)
    assert stalled.reward == 0.0 and stalled.sub_rewards["efficiency"] == 0.0
    assert wrong.reward > stalled.reward


def test_split_turns_charges_each_detour_on_its_turn_and_sums_to_the_reward(row):
    gold, right = row["gold_doc_id"], answer_text(row)
    traj = rollout(row, right, ["PR-A", "10K-B", gold], searches=2)
    for k, record in enumerate(traj.tool_calls):  # one call per turn, counted from 1 as the episode does
        record.turn = k + 1
    traj.turns = 6  # five calling turns, then the answer
    g = cost_aware_reward(cost=0.15, correctness_weight=0.7, split_turns=True)(traj, row)
    assert g.reward == pytest.approx(0.7 + 0.3 * (1 - 0.15 * 3))
    assert g.turn_rewards == pytest.approx([0, 0, -0.045, -0.045, -0.045, g.reward + 3 * 0.045])
    assert sum(g.turn_rewards) == pytest.approx(g.reward)
    # efficiency floors at 0: charges stop once the 0.3 there is to lose is spent
    g = cost_aware_reward(cost=0.5, correctness_weight=0.7, split_turns=True)(traj, row)
    assert g.reward == pytest.approx(0.7)
    assert g.turn_rewards == pytest.approx([0, 0, -0.15, -0.15, 0.0, 1.0])
    # without the evidence there was no efficiency to lose: the whole reward is the last turn's
    miss = rollout(row, "0.001", ["PR-A", "10K-B"], searches=2)
    miss.turns = 5
    g = cost_aware_reward(cost=0.15, split_turns=True)(miss, row)
    assert g.reward == 0.0 and g.turn_rewards == [0.0] * 5
    assert cost_aware_reward(cost=0.15)(traj, row).turn_rewards is None
