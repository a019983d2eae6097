"""``agentrft optimize``: variants change what the model sees, paired statistics, the proposer, best.yaml.

Rollouts run on the tiny random model (it never solves a task: the honest "no variant wins" case) or on a
prompt-aware test double that answers correctly only under one system prompt (a variant that must win).
"""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from agentrft.config import RolloutConfig, load_config
from agentrft.errors import ConfigError
from agentrft.evaluation import GradedRollout
from agentrft.governance import OptimizeConfig, evaluate_variant, load_best, load_optimize_config, run_optimize
from agentrft.governance.proposer import ProposalError, parse_proposal
from agentrft.governance.report import classify_failure, failure_breakdown, paired_reward_difference, verdict
from agentrft.governance.variants import Variant, variant_rollout
from agentrft.rollout.sampler import Completion, ScriptedSampler
from agentrft.types import Grade, StopReason, ToolCall, ToolCallRecord, ToolError, ToolErrorKind, Trajectory

OLD_PROMPT_PIECE = "Use the search tool to find documents"  # from the finance environment's system prompt
TINY_ROLLOUT = {"max_turns": 1, "max_new_tokens": 8}


def _prompt_text(traj: dict, tokenizer) -> str:
    ids = [t for t, k in zip(traj["token_ids"], traj["token_kinds"]) if k == "prompt"]
    return tokenizer.decode(ids)


def _trajectories(out: Path, variant: str) -> list[dict]:
    lines = (out / "variants" / variant / "trajectories.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture
def tiny(tiny_model):
    from agentrft.models.chat_format import get_chat_format
    from agentrft.rollout.hf_sampler import HFSampler

    model, tok = tiny_model
    return HFSampler(model, pad_token_id=tok.pad_token_id), get_chat_format(tok, "hermes"), tok


# -- a scripted proposer: a real OpenAI-compatible HTTP server on 127.0.0.1 ---------------------------------

@contextlib.contextmanager
def scripted_proposer(replies: list[str]):
    """Serves ``/v1/chat/completions``, answering with ``replies`` in order; yields (base_url, requests)."""
    requests: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append(body)
            text = replies[min(len(requests), len(replies)) - 1]
            reply = json.dumps({"id": "p", "object": "chat.completion", "created": 0, "model": body["model"],
                                "choices": [{"index": 0, "finish_reason": "stop",
                                             "message": {"role": "assistant", "content": text}}],
                                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", requests
    finally:
        server.shutdown()
        server.server_close()


# -- variants change what the model sees --------------------------------------------------------------------

def test_a_variant_changes_the_prompt_tokens_and_the_tool_schemas(tiny, tmp_path):
    sampler, cf, tok = tiny
    job = load_config({"method": "rft", "data": {"env": "finance"}, "rollout": TINY_ROLLOUT})
    variant = Variant(name="v", system_prompt="You are ZEBRA-7. Search, then answer with the number.",
                      tool_descriptions={"search": "Find QUOKKA documents by keywords."})
    base, _ = evaluate_variant(job, None, sampler, cf, limit=2)
    changed, _ = evaluate_variant(job, variant, sampler, cf, limit=2)
    for g in base:
        text = _prompt_text(g.trajectory.to_dict(), tok)
        assert OLD_PROMPT_PIECE in text and "ZEBRA-7" not in text and "QUOKKA" not in text
    for g in changed:
        text = _prompt_text(g.trajectory.to_dict(), tok)
        assert "ZEBRA-7" in text and "QUOKKA" in text and OLD_PROMPT_PIECE not in text
        assert '"name": "read"' in text  # the other tool is still offered, unchanged
    prepended = Variant(name="p", system_prompt="ZEBRA-7 FIRST.", system_prompt_mode="prepend")
    (g, *_), _ = evaluate_variant(job, prepended, sampler, cf, limit=1)
    text = _prompt_text(g.trajectory.to_dict(), tok)
    assert text.index("ZEBRA-7 FIRST.") < text.index(OLD_PROMPT_PIECE)


def _call_tokens(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")]


def test_guardrails_and_tool_output_truncation_apply_through_the_wrapper(tokenizer):
    from agentrft.models.chat_format import get_chat_format

    cf = get_chat_format(tokenizer, "hermes")
    job = load_config({"method": "rft", "data": {"env": "finance"}, "rollout": {"max_turns": 2}})
    search = '<tool_call>\n{"name": "search", "arguments": {"query": "annual report revenue"}}\n</tool_call>'
    read = '<tool_call>\n{"name": "read", "arguments": {"doc_id": "x"}}\n</tool_call>'
    script = lambda: ScriptedSampler([_call_tokens(tokenizer, search + "\n" + read), _call_tokens(tokenizer, "42")])
    (base,), _ = evaluate_variant(job, None, script(), cf, limit=1)
    guarded = Variant(name="g", guardrails={"allowed_tools": ["search"]}, tool_output={"max_chars": 40})
    (g,), _ = evaluate_variant(job, guarded, script(), cf, limit=1)
    assert [r.call.name for r in g.trajectory.tool_calls] == ["search", "read"]
    assert g.trajectory.tool_calls[1].error.kind == ToolErrorKind.GUARDRAIL
    assert base.trajectory.tool_calls[1].error is None or base.trajectory.tool_calls[1].error.kind != \
        ToolErrorKind.GUARDRAIL
    assert len(g.trajectory.tool_calls[0].result) < len(base.trajectory.tool_calls[0].result)
    assert variant_rollout(RolloutConfig(), guarded).max_tool_output_chars == 40


def test_variant_config_refuses_what_would_be_a_silent_no_op_or_change_the_measurement(tiny):
    with pytest.raises(ValueError, match="measurement"):
        Variant(name="hot", rollout={"temperature": 1.0})
    with pytest.raises(ValueError, match="unknown rollout field"):
        Variant(name="x", rollout={"max_turnz": 3})
    with pytest.raises(ValueError, match="not both"):
        Variant(name="x", rollout={"max_tool_output_chars": 5}, tool_output={"max_chars": 5})
    with pytest.raises(ConfigError, match="unknown key"):
        load_optimize_config({"base": {"method": "rft"}, "variants": [{"name": "x", "prompt": "typo"}]})
    with pytest.raises(ConfigError, match="unique"):
        load_optimize_config({"base": {"method": "rft"}, "variants": [{"name": "x"}, {"name": "x"}]})
    cfg, job, raw = load_optimize_config({"base": {"method": "rft", "data": {"env": "finance"}}, "limit": 1,
                                          "variants": [{"name": "x", "tool_descriptions": {"serch": "typo"}}]})
    with pytest.raises(ConfigError, match="unknown tool.*serch"):
        run_optimize(cfg, job, raw, ScriptedSampler([]), tiny[1], "unused")


# -- paired statistics on the same tasks --------------------------------------------------------------------

def _graded(task: str, reward: float, stop=StopReason.ANSWER, calls=(), errors=None) -> GradedRollout:
    t = Trajectory(task_id=task, messages=[], stop_reason=stop)
    t.tool_calls = list(calls)
    return GradedRollout({"id": task}, t, Grade(reward=reward, errors=errors or {}))


def test_paired_statistics_match_hand_computed_counts():
    from agentrft.evaluation import paired_accuracy

    base = [_graded(f"t{i}", r) for i, r in enumerate([1, 1, 0, 0, 1, 0, 1])]
    other = [_graded(f"t{i}", r) for i, r in enumerate([1, 0, 1, 1, 1, 0, 0])]
    other[6] = _graded("t6", 0.0, stop=StopReason.INFRA_ERROR)  # dropped from the pairs
    acc = paired_accuracy(base, other)
    assert (acc["n_tasks"], acc["both_correct"], acc["only_first_correct"], acc["only_second_correct"]) == (6, 2, 1, 2)
    assert acc["p_value"] == pytest.approx(1.0)  # 2 * (C(3,0) + C(3,1)) / 2^3
    d = paired_reward_difference(base, other)
    assert d["n_tasks"] == 6 and d["mean"] == pytest.approx(1 / 6)
    assert d["ci"][0] <= 1 / 6 <= d["ci"][1] and d["ci"][0] < 0  # one loss, two wins on six tasks: noise
    wins = paired_reward_difference([_graded(f"t{i}", 0) for i in range(6)], [_graded(f"t{i}", 1) for i in range(6)])
    assert wins["ci"] == [1.0, 1.0]
    assert paired_accuracy([_graded(f"t{i}", 0) for i in range(5)],
                           [_graded(f"t{i}", 1) for i in range(5)])["p_value"] == pytest.approx(2 / 32)
    with pytest.raises(ValueError, match="same tasks"):
        paired_reward_difference(base, other[:3])


def test_failures_are_classified_and_the_verdict_follows_the_counts():
    ok = ToolCallRecord(ToolCall("search", {"query": "q"}), 1, "hits")
    bad = lambda kind: ToolCallRecord(ToolCall("x", {}), 1, "err", ToolError(kind, "m"))
    cases = {
        "budget_exhausted": _graded("a", 0, stop=StopReason.MAX_TURNS, calls=[ok]),
        "malformed_call": _graded("b", 0, calls=[bad(ToolErrorKind.PARSE_ERROR)]),
        "no_tool_call": _graded("c", 0),
        "wrong_tool": _graded("d", 0, calls=[bad(ToolErrorKind.UNKNOWN_TOOL)]),
        "wrong_arguments": _graded("e", 0, calls=[bad(ToolErrorKind.INVALID_ARGUMENTS)]),
        "unparseable_answer": _graded("f", 0, calls=[ok], errors={"sample_parse_error": True}),
        "wrong_answer": _graded("g", 0.2, calls=[ok]),
    }
    for kind, g in cases.items():
        assert classify_failure(g, model_calls_tools=True) == kind
    assert classify_failure(cases["no_tool_call"], model_calls_tools=False) == "cannot_call_tools"
    b = failure_breakdown(list(cases.values()) + [_graded("h", 1.0, calls=[ok])], threshold=0.99)
    assert (b["failures"], b["prompt_fixable"], b["needs_weights"]) == (7, 5, 2)
    assert verdict(b, "baseline", False)["recommendation"] == "prompting"
    silent = failure_breakdown([_graded("a", 0), _graded("b", 0)], threshold=0.99)
    v = verdict(silent, "baseline", False)
    assert (v["recommendation"], v["needs_weights"], v["plateau"]) == ("weights", 2, True)
    assert "well-formed tool call" in v["reason"]


def test_proposals_are_parsed_strictly():
    assert parse_proposal('```json\n{"system_prompt": "P"}\n```', {"search"}) == {"system_prompt": "P"}
    for reply, match in [("sure! here it is", "not JSON"), ('{"system_prompt": "P", "x": 1}', "unexpected"),
                         ('{"tool_descriptions": {"serch": "d"}}', "unknown tool"), ("{}", "changes nothing"),
                         ('["P"]', "JSON object")]:
        with pytest.raises(ProposalError, match=match):
            parse_proposal(reply, {"search"})


# -- end to end: the CLI on the tiny model, a scripted proposer, no variant can win -------------------------

def test_optimize_end_to_end_with_a_scripted_proposer(tiny, tmp_path):
    from agentrft.cli.optimize import optimize_cmd
    from agentrft.models.loading import save_tiny_model

    _, _, tok = tiny
    model_dir = save_tiny_model(tmp_path / "tiny")
    proposal = {"system_prompt": "PROPOSED: search first, then read, then answer.",
                "tool_descriptions": {"read": "PROPOSED read description."}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(
        {"method": "rft", "model": str(model_dir), "data": {"env": "finance"}, "rollout": TINY_ROLLOUT}))
    with scripted_proposer(["Here you go:\n```json\n" + json.dumps(proposal) + "\n```", "I would rather not."]) \
            as (url, requests):
        (tmp_path / "optimize.yaml").write_text(yaml.safe_dump({
            "base": "job.yaml", "limit": 4,
            "variants": [{"name": "brief", "system_prompt": "Answer with the number only.",
                          "system_prompt_mode": "prepend", "rollout": {"max_tool_calls": 2}}],
            "proposer": {"base_url": url, "model": "scripted", "rounds": 2, "n_failures": 2}}))
        result = CliRunner().invoke(optimize_cmd, [str(tmp_path / "optimize.yaml"), "--out", str(tmp_path / "out"),
                                                   "--limit", "3"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    report = json.loads((out / "optimize.json").read_text())
    assert report["n_tasks"] == 3 and [v["name"] for v in report["variants"]] == ["baseline", "brief", "proposed-1"]

    # the proposer saw the current prompt, the tools and the failed rollouts
    assert len(requests) == 2
    prompt = requests[0]["messages"][-1]["content"]
    assert OLD_PROMPT_PIECE in prompt and "- search(query)" in prompt
    for task in report["proposals"][0]["failures_shown"]:
        assert task in prompt
    assert "Failed rollouts" in prompt and "reward 0.000" in prompt
    # a malformed reply is recorded, not fatal
    assert [p["status"] for p in report["proposals"]] == ["measured", "malformed reply, skipped"]
    assert "not JSON" in report["proposals"][1]["error"]
    # the proposal changed what the model saw
    for traj in _trajectories(out, "proposed-1"):
        text = _prompt_text(traj, tok)
        assert "PROPOSED: search first" in text and "PROPOSED read description." in text
        assert OLD_PROMPT_PIECE not in text
    # the same tasks everywhere
    ids = [[t["task_id"] for t in _trajectories(out, v)] for v in ("baseline", "brief", "proposed-1")]
    assert ids[0] == ids[1] == ids[2] == report["task_ids"]
    # a random model cannot win: the baseline stays, and the report says so
    assert report["best"] == "baseline"
    assert "No variant beat the baseline beyond noise" in report["choice"]
    assert report["verdict"]["plateau"] is True and report["verdict"]["recommendation"] == "weights"
    assert "Verdict: weights" in result.output and "| **baseline** |" in result.output
    job = load_config(out / "best.yaml")
    assert job.model == str(model_dir) and job.rollout.max_turns == 1 and job.data.eval_file is None
    assert not (out / "best_variant.yaml").exists()


# -- a variant that wins is written as best.yaml, and best.yaml reproduces its eval ------------------------

class AnswersUnderOnePrompt:
    """A sampler double: answers each finance question correctly when ``magic`` is in the prompt, else "0"."""

    max_context = 1 << 20

    def __init__(self, tokenizer, rows, magic: str):
        self.tok, self.magic = tokenizer, magic
        self.answers = {r["messages"][-1]["content"]: r["answer"] for r in rows}

    def generate(self, prompts, params, on_token=None):
        out = []
        for p in prompts:
            text = self.tok.decode(p)
            answer = next((a for q, a in self.answers.items() if q in text), 0) if self.magic in text else 0
            ids = _call_tokens(self.tok, str(answer))
            out.append(Completion(ids, [-0.5] * len(ids), "stop"))
        return out

    def release(self):
        pass


def test_a_winning_variant_becomes_best_yaml_and_reproduces(tokenizer, tmp_path):
    from agentrft.envs.finance import load_split
    from agentrft.models.chat_format import get_chat_format

    cf = get_chat_format(tokenizer, "hermes")
    sampler = AnswersUnderOnePrompt(tokenizer, load_split("validation"), magic="MAGIC-WORD")
    cfg, job, raw = load_optimize_config({
        "base": {"method": "rft", "data": {"env": "finance"}, "rollout": {"max_turns": 3}}, "limit": 6,
        "variants": [
            {"name": "magic", "system_prompt": "MAGIC-WORD. Answer with the number.", "rollout": {"max_turns": 2},
             "tool_descriptions": {"read": "Read a document by its id."}},
            {"name": "plain", "system_prompt": "Answer with the number."}]})
    report = run_optimize(cfg, job, raw, sampler, cf, tmp_path / "out")
    rows = {v["name"]: v for v in report["variants"]}
    assert rows["magic"]["summary"]["reward_mean"] == 1.0 and rows["baseline"]["summary"]["reward_mean"] == 0.0
    assert rows["magic"]["paired"]["accuracy"]["only_second_correct"] == 6
    assert report["best"] == "magic" and "beats the baseline" in report["choice"]
    assert report["verdict"]["recommendation"] == "done"

    out = tmp_path / "out"
    trained = load_config(out / "best.yaml")  # what `agentrft train` reads
    assert trained.data.env == "finance" and trained.rollout.max_turns == 2
    assert trained.prompt.system == "MAGIC-WORD. Answer with the number." and trained.prompt.system_mode == "replace"
    assert trained.prompt.tool_descriptions == {"read": "Read a document by its id."}
    assert not any((out / f).exists() for f in ("best_variant.yaml", "best_train.jsonl", "best_eval.jsonl"))

    best_job = load_best(out)
    again, summary = evaluate_variant(best_job, None, sampler, cf, limit=cfg.limit)
    assert summary["reward_mean"] == 1.0
    winners = _trajectories(out, "magic")
    assert [g.trajectory.token_ids for g in again] == [t["token_ids"] for t in winners]


def test_the_example_config_loads():
    cfg, job, _ = load_optimize_config(Path(__file__).resolve().parents[1] / "examples/optimize/finance.yaml")
    assert isinstance(cfg, OptimizeConfig) and cfg.variants and job.data.env_name() == "finance"


def test_variant_evals_are_written_as_the_jobs_privacy_section_says(tokenizer, tmp_path):
    from agentrft.envs.finance import load_split
    from agentrft.models.chat_format import get_chat_format

    cf = get_chat_format(tokenizer, "hermes")
    sampler = AnswersUnderOnePrompt(tokenizer, load_split("validation"), magic="MAGIC-WORD")
    cfg, job, raw = load_optimize_config({
        "base": {"method": "rft", "data": {"env": "finance"}, "rollout": {"max_turns": 2},
                 "privacy": {"store": "redacted"}}, "limit": 2,
        "variants": [{"name": "magic", "system_prompt": "MAGIC-WORD. Contact ops@example.com."}]})
    run_optimize(cfg, job, raw, sampler, cf, tmp_path / "out")
    for variant in ("baseline", "magic"):
        for t in _trajectories(tmp_path / "out", variant):
            assert t["metadata"]["privacy_store"] == "redacted" and not t.get("token_ids")
    written = (tmp_path / "out" / "variants" / "magic" / "trajectories.jsonl").read_text()
    assert "MAGIC-WORD" in written and "ops@example.com" not in written
