"""The episode loop driven by a scripted sampler: token kinds, fidelity, typed failures."""

from __future__ import annotations

import json

import pytest

from agentrft.models.chat_format import HermesChatFormat
from agentrft.rollout.episode import RolloutConfig, run_episodes
from agentrft.rollout.sampler import Completion, SamplingParams, ScriptedSampler
from agentrft.tools.environment import Environment
from agentrft.types import StopReason, ToolCall, ToolErrorKind


class Calculator(Environment):
    def setup(self, row: dict) -> None:
        self.offset = row.get("offset", 0)
        self.calls = 0

    def add(self, a: int, b: int) -> int:
        """Add two integers.

        Args:
            a: first addend
            b: second addend
        """
        self.calls += 1
        return a + b + self.offset


ROW = {"id": "t1", "messages": [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "What is 2+3?"}]}


@pytest.fixture()
def cf(tokenizer):
    return HermesChatFormat(tokenizer)


def call_msg(*calls: ToolCall, content: str = "") -> dict:
    return {"role": "assistant", "content": content, "tool_calls": [c.to_openai() for c in calls]}


def segments(traj):
    """[(kind, ids)] runs of equal kind."""
    out = []
    for tid, kind in zip(traj.token_ids, traj.token_kinds):
        if out and out[-1][0] == kind:
            out[-1][1].append(tid)
        else:
            out.append((kind, [tid]))
    return out


def test_tool_then_answer_token_kinds_and_fidelity(cf):
    call = ToolCall("add", {"a": 2, "b": 3}, id="call_1")
    turn1 = cf.assistant_tokens(call_msg(call))
    turn2 = cf.assistant_tokens({"role": "assistant", "content": "5"})
    sampler = ScriptedSampler([list(turn1), list(turn2)])
    (traj,) = run_episodes([ROW], lambda row: Calculator(), sampler, cf, RolloutConfig(max_turns=4))

    assert traj.stop_reason == StopReason.ANSWER
    assert traj.turns == 2
    kinds = [k for k, _ in segments(traj)]
    assert kinds == ["prompt", "sampled", "env", "sampled", "env"]
    segs = segments(traj)
    assert segs[1][1] == turn1 and segs[3][1] == turn2  # sampled tokens kept exactly
    # logprobs exactly on sampled tokens, from the sampler
    assert all((lp == -0.5) == (k == "sampled") for lp, k in zip(traj.logprobs, traj.token_kinds) if lp is not None)
    assert sum(lp is not None for lp in traj.logprobs) == len(turn1) + len(turn2)

    (rec,) = traj.tool_calls
    assert rec.call.name == "add" and rec.result == "5" and rec.error is None and rec.turn == 1
    assert [m["role"] for m in traj.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert traj.output_text == "5"
    # Incremental record == rendering the whole conversation at once.
    schemas = [t.schema() for t in Calculator().tools()]
    assert traj.token_ids == cf.render(traj.messages, schemas)
    # The second turn's prompt was exactly the record so far.
    assert sampler.calls[1][0] == traj.token_ids[: len(sampler.calls[1][0])]


def test_fresh_environment_per_rollout_and_setup_from_row(cf):
    envs = []

    def make(row):
        envs.append(Calculator())
        return envs[-1]

    call = ToolCall("add", {"a": 1, "b": 1}, id="c")
    script = [cf.assistant_tokens(call_msg(call))] * 2 + [cf.assistant_tokens({"role": "assistant", "content": "x"})] * 2
    row = dict(ROW, offset=10)
    trajs = run_episodes([row], make, ScriptedSampler([list(s) for s in script]), cf, samples_per_task=2)
    assert len(envs) == 2 and envs[0] is not envs[1]
    assert [e.calls for e in envs] == [1, 1]
    assert [t.tool_calls[0].result for t in trajs] == ["12", "12"]
    assert [t.group_index for t in trajs] == [0, 1]
    assert trajs[0].trace_id != trajs[1].trace_id


def test_malformed_tool_call_is_recorded_and_rollout_continues(cf):
    bad = cf.tokenizer.encode('<tool_call>\n{"name": "add", "arguments": {"a": 2,}}\n</tool_call>', add_special_tokens=False)
    bad = bad + list(cf.stop_token_ids)
    answer = cf.assistant_tokens({"role": "assistant", "content": "5"})
    (traj,) = run_episodes([ROW], lambda r: Calculator(), ScriptedSampler([bad, list(answer)]), cf)
    assert traj.stop_reason == StopReason.ANSWER and traj.turns == 2
    (rec,) = traj.tool_calls
    assert rec.error is not None and rec.error.kind == ToolErrorKind.PARSE_ERROR
    tool_msgs = [m for m in traj.messages if m["role"] == "tool"]
    assert len(tool_msgs) == 1 and "parse_error" in tool_msgs[0]["content"].lower().replace(" ", "_")


def test_tool_failures_are_typed_and_shown(cf):
    calls = [ToolCall("add", {"a": "two", "b": 3}, id="c1"), ToolCall("nope", {}, id="c2")]
    script = [cf.assistant_tokens(call_msg(*calls)), cf.assistant_tokens({"role": "assistant", "content": "?"})]
    (traj,) = run_episodes([ROW], lambda r: Calculator(), ScriptedSampler([list(s) for s in script]), cf)
    kinds = [r.error.kind for r in traj.tool_calls]
    assert kinds == [ToolErrorKind.INVALID_ARGUMENTS, ToolErrorKind.UNKNOWN_TOOL]
    assert traj.num_tool_errors == 2 and traj.stop_reason == StopReason.ANSWER


def test_schema_only_tools_end_at_the_call_turn(cf):
    schema = {"type": "function", "function": {"name": "refund", "description": "Refund an order",
              "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}}
    row = dict(ROW, tools=[schema])
    call = ToolCall("refund", {"order_id": "A1"}, id="c1")
    (traj,) = run_episodes([row], lambda r: None, ScriptedSampler([list(cf.assistant_tokens(call_msg(call)))]), cf)
    assert traj.stop_reason == StopReason.TOOL_CALLS_OUTPUT
    (rec,) = traj.tool_calls  # counted like any call, though nothing ran
    assert traj.turns == 1 and rec.call.name == "refund" and rec.error is None and rec.result == ""
    (out,) = traj.output_tools
    assert out["function"]["name"] == "refund"


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def test_parallel_schema_only_calls_are_all_kept_and_checked(cf):
    row = dict(ROW, tools=[WEATHER])
    calls = [ToolCall("get_weather", {"city": "Oslo"}), ToolCall("get_weather", {"city_1": "Rome"})]
    (traj,) = run_episodes([row], lambda r: None, ScriptedSampler([list(cf.assistant_tokens(call_msg(*calls)))]), cf)
    assert traj.stop_reason == StopReason.TOOL_CALLS_OUTPUT
    assert [r.call.arguments for r in traj.tool_calls] == [{"city": "Oslo"}, {"city_1": "Rome"}]
    assert traj.tool_calls[0].error is None
    bad = traj.tool_calls[1].error
    assert bad.kind == ToolErrorKind.SCHEMA_VIOLATION and "'city_1'" in bad.message and "'city'" in bad.message
    # the grader still sees both calls exactly as written
    assert [json.loads(o["function"]["arguments"]) for o in traj.output_tools] == [{"city": "Oslo"}, {"city_1": "Rome"}]
    assert traj.messages[-1]["role"] == "assistant"  # no tool results were shown back


def test_mixed_turn_runs_the_implemented_call_and_ends_with_all_calls(cf):
    row = dict(ROW, tools=[WEATHER])
    env = Calculator()
    calls = [ToolCall("add", {"a": 2, "b": 3}), ToolCall("get_weather", {"city": "Oslo"})]
    (traj,) = run_episodes([row], lambda r: env, ScriptedSampler([list(cf.assistant_tokens(call_msg(*calls)))]), cf)
    assert traj.stop_reason == StopReason.TOOL_CALLS_OUTPUT and env.calls == 1
    add, weather = traj.tool_calls
    assert add.call.name == "add" and add.result == "5" and add.error is None
    assert weather.call.name == "get_weather" and weather.result == ""
    assert [o["function"]["name"] for o in traj.output_tools] == ["add", "get_weather"]


def test_max_turns_and_token_budget(cf):
    call = ToolCall("add", {"a": 1, "b": 2}, id="c")
    loop = [list(cf.assistant_tokens(call_msg(call)))] * 3
    (traj,) = run_episodes([ROW], lambda r: Calculator(), ScriptedSampler(list(loop)), cf, RolloutConfig(max_turns=2))
    assert traj.stop_reason == StopReason.MAX_TURNS and traj.turns == 2 and len(traj.tool_calls) == 2

    prompt_len = len(cf.prompt_tokens(ROW["messages"], [t.schema() for t in Calculator().tools()]))
    cfg = RolloutConfig(max_turns=5, max_total_tokens=prompt_len + 5)
    (traj,) = run_episodes([ROW], lambda r: Calculator(), ScriptedSampler(list(loop)), cf, cfg)
    assert traj.stop_reason == StopReason.MAX_TOKENS
    assert traj.num_sampled_tokens == 5


class BrokenSetup(Environment):
    def setup(self, row: dict) -> None:
        raise RuntimeError("database unavailable")

    def noop(self) -> str:
        """Do nothing."""
        return ""


class ExplodingSampler:
    def generate(self, prompts, params: SamplingParams) -> list[Completion]:
        raise RuntimeError("CUDA out of memory")


def test_infrastructure_failures_are_data_not_crashes(cf):
    (traj,) = run_episodes([ROW], lambda r: BrokenSetup(), ScriptedSampler([]), cf)
    assert traj.stop_reason == StopReason.INFRA_ERROR and traj.is_infra_failure
    assert traj.errors[0].kind == "env_setup" and "database unavailable" in traj.errors[0].message

    (traj,) = run_episodes([ROW], lambda r: Calculator(), ExplodingSampler(), cf)
    assert traj.stop_reason == StopReason.INFRA_ERROR
    assert traj.errors[0].kind == "sampler" and "out of memory" in traj.errors[0].message


def test_full_context_window_stops_with_context_limit(cf):
    # a sampler that can no longer add tokens (prompt fills the window) returns nothing
    (traj,) = run_episodes([ROW], lambda r: Calculator(), ScriptedSampler([[]]), cf)
    assert traj.stop_reason == StopReason.CONTEXT_LIMIT and traj.num_sampled_tokens == 0


def test_guardrails_refuse_calls_and_the_rollout_continues(cf):
    from agentrft.tools.guardrails import Guardrails, count_guardrail_violations

    calls = [ToolCall("add", {"a": 1, "b": 2}, id="c1"), ToolCall("add", {"a": 500, "b": 2}, id="c2")]
    script = [cf.assistant_tokens(call_msg(*calls)), cf.assistant_tokens({"role": "assistant", "content": "3"})]
    rails = Guardrails({"argument_constraints": {"add": {"a": {"maximum": 100}}}})
    (traj,) = run_episodes([ROW], lambda r: Calculator(), ScriptedSampler([list(s) for s in script]), cf, guardrails=rails)
    assert [r.error.kind if r.error else None for r in traj.tool_calls] == [None, ToolErrorKind.GUARDRAIL]
    assert count_guardrail_violations(traj) == 1 and traj.stop_reason == StopReason.ANSWER
    assert "Error (guardrail)" in [m for m in traj.messages if m["role"] == "tool"][1]["content"]
