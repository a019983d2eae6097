"""The promotion gate, the model registry, rollback and ``serve --model NAME`` following an alias.

Runs are made directly (a run store and one checkpoint of a LoRA adapter over the tiny random model, no
training), so each is a few hundred milliseconds. The gate's tasks are graded by ``string_check`` against run
A's own greedy answers: A scores 1.0, a run whose adapter is garbled scores less (refused), and a run whose
adapter differs from A's by 1e-6 answers the same with other weights (promoted, and distinguishable by hash).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from agentrft.cli import main
from agentrft.config import load_config
from agentrft.evaluation import GradedRollout
from agentrft.governance.gate import GateSpec, gate_checks, gate_tasks, load_gate_spec, tool_misuse
from agentrft.governance.promote import gate_eval
from agentrft.governance.registry import ModelRegistry
from agentrft.jobs.audit import AuditLog
from agentrft.jobs.checkpoint import load_latest_checkpoint, save_checkpoint
from agentrft.jobs.registry_store import RegistryError, weights_sha256
from agentrft.jobs.store import RunStore
from agentrft.jobs.trained import load_any_model
from agentrft.types import Grade, ToolCall, ToolCallRecord, ToolError, ToolErrorKind, Trajectory

PROMPTS = ["Name a colour.", "Say hello.", "Count to three.", "Pick a fruit."]
STRING_CHECK = {"type": "string_check", "name": "same", "input": "{{sample.output_text}}",
                "reference": "{{item.reference_answer}}", "operation": "eq"}


def _make_run(root: Path, base: Path, name: str, adapter: dict[str, torch.Tensor] | None = None,
              scale: float = 0.0, seed: int = 0, privacy: str = "full") -> tuple[Path, dict[str, torch.Tensor]]:
    """A run directory with one checkpoint of a LoRA adapter: ``adapter`` (every LoRA tensor) if given, else
    peft's initial A matrices and random B matrices of ``scale``; returns it and the adapter's tensors."""
    from agentrft.models.policy import build_policy

    run_dir = root / name
    cfg = load_config({"method": "rft", "model": str(base), "out_dir": str(run_dir), "data": {"env": "toy"},
                       "lora": {"enabled": True, "r": 4, "target_modules": ["q_proj", "v_proj", "down_proj"]},
                       "privacy": {"store": privacy}})
    with RunStore(run_dir) as store:
        store.create_run(name, "rft", cfg.model_dump(mode="json"), {}, 0.0)
    policy = build_policy(cfg)
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    with torch.no_grad():
        for n, p in policy.model.named_parameters():
            if "lora_" not in n:
                continue
            if adapter is not None:
                p.copy_(adapter[n])
            elif "lora_B" in n:  # peft starts B at zero: the adapter would change nothing
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
            weights[n] = p.detach().clone()
    save_checkpoint(run_dir, 1, policy.model, None, trainer_state={}, metric=None)
    return run_dir, weights


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Runs A (the reference), B (garbled), C (A + 1e-6) and a gate whose references are A's greedy answers."""
    from agentrft.graders.sample import build_sample
    from agentrft.models.loading import save_tiny_model

    root = tmp_path_factory.mktemp("promote")
    base = save_tiny_model(root / "model")
    run_a, a = _make_run(root, base, "a", scale=0.5, seed=1)
    run_b, _ = _make_run(root, base, "b", scale=8.0, seed=2, privacy="redacted")
    run_c, _ = _make_run(root, base, "c", adapter={k: v + 1e-6 for k, v in a.items()})
    (root / "grader.json").write_text(json.dumps(STRING_CHECK))
    rows = [{"id": f"t{i}", "messages": [{"role": "user", "content": p}], "category": "xy"[i % 2]}
            for i, p in enumerate(PROMPTS)]
    raw = {"tasks": {"file": "tasks.jsonl", "grader": "grader.json"},
           "rollout": {"max_turns": 1, "max_new_tokens": 4},
           "thresholds": {"min_accuracy": 0.5, "max_accuracy_drop": 0.0, "max_category_drop": 0.0,
                          "max_tool_calls_per_task": 2, "max_mean_tokens": 10_000, "max_tokens_increase": 0.5,
                          "max_tool_misuse_rate": 0.0, "max_probe_score": 0.5},
           "allowed_tools": ["search"], "probe_rows": 2}
    (root / "tasks.jsonl").write_text("".join(json.dumps({**r, "reference_answer": ""}) + "\n" for r in rows))
    (root / "gate.yaml").write_text(json.dumps(raw))  # JSON is YAML
    spec = load_gate_spec(root / "gate.yaml")
    env, gate_rows = gate_tasks(spec)
    graded = gate_eval(load_any_model(run_a), env, gate_rows, spec)
    answers = [build_sample(g.trajectory)["output_text"] for g in graded]
    assert all(answers) and len(set(answers)) > 1, answers  # non-empty (else the `empty` probe would pass)
    (root / "tasks.jsonl").write_text("".join(json.dumps({**r, "reference_answer": t}) + "\n"
                                              for r, t in zip(rows, answers)))
    return {"root": root, "a": run_a, "b": run_b, "c": run_c, "gate": root / "gate.yaml"}


def _sha(run_dir: Path) -> str:
    return weights_sha256(load_latest_checkpoint(run_dir).path)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _promote(world, run: str, home: Path, *extra: str):
    return CliRunner().invoke(main, ["promote", str(world[run]), "--as", "agent", "--gate", str(world["gate"]),
                                     "--home", str(home), *extra])


@pytest.mark.slow
def test_gate_promotes_refuses_and_rollback_restores_the_exact_weights(world, tmp_path):
    home = tmp_path / "home"
    sha_a, sha_b, sha_c = _sha(world["a"]), _sha(world["b"]), _sha(world["c"])
    assert len({sha_a, sha_b, sha_c}) == 3

    # (a) the first promotion runs the absolute checks only, and passes
    res = _promote(world, "a", home)
    assert res.exit_code == 0, res.output
    assert "promoted: agent" in res.output and "max_accuracy_drop" not in res.output
    reg = ModelRegistry(home)
    entry_a = reg.current("agent")
    assert entry_a.weights_sha256 == sha_a and entry_a.previous is None
    assert {c["name"] for c in entry_a.gate["checks"]} == {"min_accuracy", "max_tool_calls_per_task",
                                                            "max_mean_tokens", "max_tool_misuse_rate",
                                                            "max_probe_score"}
    assert weights_sha256(reg.object_path(entry_a)) == sha_a  # a copy, hashed from its own files

    # (b) a worse run is refused: exit 1, the registry byte for byte as it was, the refusal audited
    before = _snapshot(reg.root)
    res = _promote(world, "b", home, "--out", str(tmp_path / "gate-b"))
    assert res.exit_code == 1, res.output
    assert "refused:" in res.output and "max_accuracy_drop" in res.output and "FAIL" in res.output
    assert _snapshot(reg.root) == before
    assert not (home / ".registry-staging").exists()
    report = json.loads((tmp_path / "gate-b" / "gate.json").read_text())
    assert report["passed"] is False and report["candidate"]["accuracy"] < report["current"]["accuracy"] == 1.0
    for label in ("candidate", "current"):  # the gate's evals are written as run B's privacy section says
        lines = (tmp_path / "gate-b" / label / "trajectories.jsonl").read_text().splitlines()
        assert lines and all(json.loads(x)["metadata"]["privacy_store"] == "redacted" for x in lines)

    # (c) a passing run is promoted; rollback restores A's exact weights, instantly
    res = _promote(world, "c", home)
    assert res.exit_code == 0, res.output
    assert reg.current("agent").weights_sha256 == sha_c
    res = CliRunner().invoke(main, ["rollback", "agent", "--home", str(home)])
    assert res.exit_code == 0, res.output
    restored = reg.current("agent")
    assert restored.weights_sha256 == sha_a and weights_sha256(reg.object_path(restored)) == sha_a
    assert [e.weights_sha256 for e in reg.history("agent")] == [sha_a, sha_c]
    loaded = reg.load("agent")
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    saved = load_file(str(load_latest_checkpoint(world["a"]).path / "adapter" / "adapter_model.safetensors"))
    state = get_peft_model_state_dict(loaded.model)
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    res = CliRunner().invoke(main, ["rollback", "agent", "--home", str(home)])
    assert res.exit_code == 2 and "nothing before it" in res.output

    actions = [(e["action"], e["subject"]) for e in AuditLog(home / "audit.jsonl").entries()]
    assert actions == [("promote", "agent"), ("promote_refused", "agent"), ("promote", "agent"),
                       ("rollback", "agent")]
    refused = AuditLog(home / "audit.jsonl").entries()[1]["details"]
    assert refused["weights_sha256"] == sha_b and "max_accuracy_drop" in {c["name"] for c in refused["failed"]}
    assert AuditLog(home / "audit.jsonl").verify() == []
    shown = CliRunner().invoke(main, ["registry", "show", "agent", "--home", str(home)])
    assert shown.exit_code == 0 and shown.output.splitlines()[0].startswith("*")


def test_a_promoted_copy_that_changed_on_disk_is_not_loaded(world, tmp_path):
    reg = ModelRegistry(tmp_path / "home")
    with reg.stage(world["a"]) as staged:
        entry = reg.promote_staged("agent", staged)
    weights = reg.object_path(entry) / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(RegistryError, match="changed"):
        reg.load("agent")


def _traj(task_id: str, *calls: ToolCallRecord) -> Trajectory:
    t = Trajectory(task_id=task_id, messages=[])
    t.tool_calls.extend(calls)
    return t


def test_tool_misuse_counts_calls_outside_the_allow_list_and_forbidden_arguments():
    spec = GateSpec.model_validate({"thresholds": {"max_tool_misuse_rate": 0.25}, "allowed_tools": ["search", "read"],
                                    "forbidden_arguments": [{"tool": "read", "argument": "doc_id",
                                                             "pattern": "^internal-"}]})
    ok = _traj("t0", ToolCallRecord(ToolCall("search", {"query": "revenue"}), turn=0))
    outside = _traj("t1", ToolCallRecord(ToolCall("delete_all", {}), turn=0))
    forbidden = _traj("t2", ToolCallRecord(ToolCall("read", {"doc_id": "internal-42"}), turn=0))
    refused = _traj("t3", ToolCallRecord(ToolCall("search", {"query": "x"}), turn=0,
                                         error=ToolError(ToolErrorKind.GUARDRAIL, "over the cap")))
    assert tool_misuse(ok, spec.allowed_tools, spec.forbidden_arguments) == []
    assert tool_misuse(outside, spec.allowed_tools, spec.forbidden_arguments) == ["delete_all: not in allowed_tools"]
    assert "matches" in tool_misuse(forbidden, spec.allowed_tools, spec.forbidden_arguments)[0]
    assert "guardrail" in tool_misuse(refused, spec.allowed_tools, spec.forbidden_arguments)[0]

    graded = [GradedRollout({"id": t.task_id}, t, Grade(reward=1.0)) for t in (ok, outside)]
    (check,) = gate_checks(spec, graded, None)
    assert check.name == "max_tool_misuse_rate" and check.value == 0.5 and not check.passed
    assert "delete_all" in check.detail
    (check,) = gate_checks(spec, graded[:1], None)
    assert check.passed and check.value == 0.0


def test_a_gate_that_checks_nothing_is_an_error():
    from agentrft.errors import ConfigError

    with pytest.raises(ConfigError, match="at least one"):
        load_gate_spec({"thresholds": {}})
    with pytest.raises(ConfigError, match="thresholds.max_acuracy"):
        load_gate_spec({"thresholds": {"max_acuracy": 0.1}})


def test_the_example_gate_measures_finance_by_metric():
    from agentrft.governance.gate import probe_score

    spec = load_gate_spec(Path(__file__).resolve().parents[1] / "examples" / "governance" / "gate.yaml")
    env, rows = gate_tasks(spec)
    assert env.name == "finance" and len(rows) == 32 and spec.rollout.temperature == 0 and spec.rollout.seed == 0
    assert len({r[spec.tasks.category_key] for r in rows}) > 1
    score, detail = probe_score(spec, env.grade, rows)
    assert score <= spec.thresholds.max_probe_score, detail  # with the known numeric loophole excluded


def _ask(client, content: str = "Say hello."):
    raw = client.chat.completions.with_raw_response.create(
        model="agent", messages=[{"role": "user", "content": content}], temperature=0, max_tokens=6)
    switched = raw.headers.get("x-agentrft-weights-switched") == "1"  # in flight during a switch: either weights
    return (None if switched else raw.headers["x-agentrft-weights-sha256"]), raw.parse()


def _until(client, sha: str, timeout_s: float = 20.0):
    """Ask until a response comes from ``sha`` (the watcher polls; the new target loads on its own thread)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got, completion = _ask(client)
        if got == sha or time.monotonic() > deadline:
            return got, completion
        time.sleep(0.05)


@pytest.mark.slow
def test_serve_follows_the_alias_without_a_restart(world, tmp_path, monkeypatch, openai_server):
    import uvicorn

    home = tmp_path / "home"
    reg = ModelRegistry(home)
    sha_a, sha_b = _sha(world["a"]), _sha(world["b"])
    reg.promote("agent", world["a"])
    captured = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: captured.update(app=app, **kw))
    res = CliRunner().invoke(main, ["serve", "--model", "agent", "--home", str(home)])
    assert res.exit_code == 0, res.output
    assert "following promotions" in res.output
    app = captured["app"]
    app.state.alias.poll_s = 0.05
    with openai_server(app) as client:
        assert [m.id for m in client.models.list().data] == ["agent"]
        sha, first = _ask(client)
        assert sha == sha_a and first.model == "agent"
        reg.promote("agent", world["b"])  # the library call, no gate: B answers differently from A
        sha, second = _until(client, sha_b)
        assert sha == sha_b and second.choices[0].message.content != first.choices[0].message.content
        reg.rollback("agent")
        sha, third = _until(client, sha_a)
        assert sha == sha_a and third.choices[0].message.content == first.choices[0].message.content
        assert app.state.alias.switches == 2
    serve = [e for e in AuditLog(home / "audit.jsonl").entries() if e["action"] == "serve"]
    assert len(serve) == 1 and serve[0]["details"]["weights_sha256"] == sha_a
