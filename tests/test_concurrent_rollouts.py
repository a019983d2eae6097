"""The per-episode collector: lockstep's trajectories, no waiting on another rollout's tools, batched turns,
failures kept per rollout. Light: a prompt-driven scripted sampler, sleeps for tool latency, the tiny model."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from agentrft.config import RolloutConfig
from agentrft.models.chat_format import HermesChatFormat
from agentrft.rollout.collector import episode_seed, run_episodes_concurrently
from agentrft.rollout.episode import run_episodes
from agentrft.rollout.sampler import Completion, SamplingParams
from agentrft.tools.environment import Environment
from agentrft.types import StopReason, ToolCall, ToolErrorKind


class Worker(Environment):
    """One tool, ``work``, that takes the row's ``delay`` seconds (or raises, with ``fail``)."""

    def setup(self, row: dict) -> None:
        self.delay, self.fail, self.tag = row.get("delay", 0.0), row.get("fail"), row["id"]

    def work(self, n: int) -> str:
        """Do one step of the task.

        Args:
            n: the step number
        """
        if self.fail == "raise":
            raise ValueError("the step broke")
        time.sleep(self.delay)
        return f"{self.tag} step {n} done"


class BrokenSetup(Environment):
    def setup(self, row: dict) -> None:
        raise RuntimeError("no database")


def row(i: int, calls: int = 2, **extra) -> dict:
    return {"id": f"t{i}", "messages": [{"role": "user", "content": f"task {i}: calls={calls}"}], **extra}


class PromptSampler:
    """Deterministic by prompt: calls ``work`` until the prompt holds ``calls=N`` tool results, then answers.

    Thread-safe; records each call's batch size, how many calls overlapped, and fails prompts containing
    ``fail_on`` (a whole call fails, as a real sampler's would). ``delay_s`` per call stands in for decoding."""

    def __init__(self, tokenizer, cf, delay_s: float = 0.0, fail_on: str | None = None, by_seed: bool = False):
        self.tok, self.cf, self.delay_s, self.fail_on, self.by_seed = tokenizer, cf, delay_s, fail_on, by_seed
        self.max_context = 1 << 20
        self.batches: list[int] = []
        self.in_flight = self.most_in_flight = 0
        self._lock = threading.Lock()

    def generate(self, prompts, params: SamplingParams, on_token=None) -> list[Completion]:
        with self._lock:
            self.batches.append(len(prompts))
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            time.sleep(self.delay_s)
            texts = [self.tok.decode(list(p)) for p in prompts]
            if self.fail_on and any(self.fail_on in t for t in texts):
                raise RuntimeError("the sampler fell over")
            return [self._complete(t, params) for t in texts]
        finally:
            with self._lock:
                self.in_flight -= 1

    def _complete(self, text: str, params: SamplingParams) -> Completion:
        done = text.count("<tool_response>")
        if done < int(re.search(r"calls=(\d+)", text).group(1)):
            msg = {"role": "assistant", "content": "",
                   "tool_calls": [ToolCall("work", {"n": done + 1}, id=f"call_{done + 1}").to_openai()]}
        else:
            seed = f" ({params.seed})" if self.by_seed else ""
            msg = {"role": "assistant", "content": f"finished after {done}{seed}"}
        ids = list(self.cf.assistant_tokens(msg))
        return Completion(ids, [-0.25 * (done + 1)] * len(ids), "stop")

    def release(self) -> None:
        pass


@pytest.fixture()
def cf(tokenizer):
    return HermesChatFormat(tokenizer)


def record(t) -> tuple:
    """Everything a trajectory records but its timings, trace id and the call ids the parser draws."""
    calls = [(r.call.name, r.call.arguments, r.result, r.error.kind if r.error else None, r.turn)
             for r in t.tool_calls]
    messages = re.sub(r"call_[0-9a-f]{12}", "call_?", json.dumps(t.messages))
    return (t.task_id, t.group_index, t.token_ids, t.token_kinds, t.logprobs, messages, calls, t.stop_reason,
            t.turns, [(e.kind, e.message, e.turn) for e in t.errors])


@pytest.mark.parametrize("batch_requests", [True, False])
def test_the_same_trajectories_as_lockstep_with_a_deterministic_sampler(tokenizer, cf, batch_requests):
    rows = [row(0, calls=0), row(1, calls=1), row(2, calls=2, delay=0.05), row(3, calls=5), row(4, calls=1, bad=1)]
    make = lambda r: BrokenSetup() if r.get("bad") else Worker()  # noqa: E731
    config = RolloutConfig(max_turns=3)
    lockstep = run_episodes(rows, make, PromptSampler(tokenizer, cf), cf, config, samples_per_task=2)
    sampler = PromptSampler(tokenizer, cf)
    concurrent = run_episodes_concurrently(rows, make, sampler, cf, config, samples_per_task=2,
                                           batch_requests=batch_requests)
    assert [record(t) for t in concurrent] == [record(t) for t in lockstep]
    assert [t.stop_reason for t in concurrent[::2]] == [StopReason.ANSWER, StopReason.ANSWER, StopReason.ANSWER,
                                                        StopReason.MAX_TURNS, StopReason.INFRA_ERROR]
    for t in concurrent:
        t.validate()
    if batch_requests:
        assert sampler.most_in_flight == 1  # one worker owns a local sampler


def test_greedy_tiny_model_trajectories_equal_lockstep(tiny_model):
    from agentrft.envs.toy import env_spec
    from agentrft.rollout.hf_sampler import HFSampler

    model, tok = tiny_model
    cf = HermesChatFormat(tok)
    spec = env_spec()
    rows = spec.load_split("validation")[:2]
    config = RolloutConfig(temperature=0, max_new_tokens=12, max_turns=2)
    lockstep = run_episodes(rows, spec.make_env, HFSampler(model, pad_token_id=tok.pad_token_id), cf, config,
                            samples_per_task=2)
    concurrent = run_episodes_concurrently(rows, spec.make_env, HFSampler(model, pad_token_id=tok.pad_token_id), cf,
                                           config, samples_per_task=2)
    for a, b in zip(concurrent, lockstep):
        assert (a.token_ids, a.token_kinds, a.stop_reason, a.turns) == (b.token_ids, b.token_kinds, b.stop_reason,
                                                                        b.turns)
        assert [lp for lp in a.logprobs if lp is not None] == pytest.approx(
            [lp for lp in b.logprobs if lp is not None], abs=1e-4)


def test_a_slow_tool_holds_up_only_its_own_rollout_and_ready_turns_share_a_call(tokenizer, cf):
    rows = [row(0, calls=2, delay=1.0)] + [row(i, calls=3) for i in range(1, 7)]
    finished: dict[str, float] = {}
    sampler = PromptSampler(tokenizer, cf, delay_s=0.02)
    t0 = time.monotonic()
    trajs = run_episodes_concurrently(rows, lambda r: Worker(), sampler, cf, RolloutConfig(max_turns=4),
                                      on_finished=lambda t: finished.setdefault(t.task_id, time.monotonic() - t0))
    assert all(t.stop_reason == StopReason.ANSWER for t in trajs)
    fast = [finished[f"t{i}"] for i in range(1, 7)]
    # the fast rollouts (3 tool turns each) end long before the slow one (2 tool calls of 1 s); in lockstep each
    # of their turns would wait for its call, ending them after its second one (2 s). A margin for a busy CPU.
    assert max(fast) < 1.5 and finished["t0"] >= 2.0
    assert max(sampler.batches) > 1 and sampler.most_in_flight == 1  # turns ready together shared a call


def test_episode_seeds_differ_within_a_group_and_reproduce(tokenizer, cf):
    config = RolloutConfig(seed=7, temperature=1.0, max_turns=2)
    rows = [row(0, calls=1), row(1, calls=1)]

    def answers():
        sampler = PromptSampler(tokenizer, cf, by_seed=True)
        trajs = run_episodes_concurrently(rows, lambda r: Worker(), sampler, cf, config, samples_per_task=2,
                                          batch_requests=False)
        return [t.output_text for t in trajs]

    first = answers()
    assert first == answers()  # each request alone: an episode's seed does not depend on the others' timing
    assert len(set(first)) == 4
    assert first[1] == f"finished after 1 ({episode_seed(config, 1, 2)})"
    assert episode_seed(RolloutConfig(), 0, 1) is None


def test_tool_errors_timeouts_and_sampler_failures_stay_on_their_rollout(tokenizer, cf):
    rows = [row(0, calls=1, fail="raise"), row(1, calls=1, delay=1.0), row(2, calls=1, boom=1),
            row(3, calls=2), row(4, calls=2)]
    rows[2]["messages"][0]["content"] += " EXPLODE"
    config = RolloutConfig(max_turns=3, tool_timeout_s=0.3)
    sampler = PromptSampler(tokenizer, cf, fail_on="EXPLODE")
    t0 = time.monotonic()
    raised, timed_out, broken, *fine = run_episodes_concurrently(rows, lambda r: Worker(), sampler, cf, config,
                                                                 batch_requests=False)
    assert time.monotonic() - t0 < 5
    assert raised.tool_calls[0].error.kind == ToolErrorKind.EXCEPTION and raised.stop_reason == StopReason.ANSWER
    assert timed_out.tool_calls[0].error.kind == ToolErrorKind.TIMEOUT and timed_out.stop_reason == StopReason.ANSWER
    assert broken.stop_reason == StopReason.INFRA_ERROR and broken.is_infra_failure
    assert broken.errors[0].kind == "sampler" and "fell over" in broken.errors[0].message
    for t in fine:
        assert t.stop_reason == StopReason.ANSWER and not t.errors and len(t.tool_calls) == 2


def test_rft_and_its_eval_roll_out_per_episode_when_the_config_says_so(tmp_path, tiny_model):
    """``rollout.mode: per_episode`` reaches RFT's collection and the periodic eval; greedy, it stores exactly
    the tokens the lockstep run stores."""
    import copy

    from agentrft.config import load_config
    from agentrft.jobs.store import RunStore
    from agentrft.train.runner import run_job
    from test_train import RFT_CONFIG

    model, tok = tiny_model
    stored = {}
    for mode in ("lockstep", "per_episode"):
        cfg = load_config({**RFT_CONFIG, "model": "unused", "out_dir": str(tmp_path / mode),
                           "rollout": {**RFT_CONFIG.get("rollout", {}), "temperature": 0.0, "mode": mode},
                           "training": {"max_steps": 1, "batch_size": 2, "eval_interval": 1, "eval_samples": 2}})
        run_job(cfg, model=copy.deepcopy(model), tokenizer=tok, log=lambda s: None)
        with RunStore(tmp_path / mode) as store:
            stored[mode] = [t["token_ids"] for t in store.trajectories(split=None)]
    assert stored["lockstep"] and stored["per_episode"] == stored["lockstep"]
