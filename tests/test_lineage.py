"""``agentrft lineage``: an SFT run, an RFT run on top of it (``init_from``), the audit entries training wrote,
the model card, and a tampered audit log that makes the command fail.

The two tiny runs (one step each) are trained once per module through ``run_job``, so the audit entries
come from the real runner (:mod:`agentrft.train.audit_hooks`).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from agentrft.cli import main
from agentrft.config import load_config
from agentrft.jobs.audit import AuditLog, run_lineage_fields

DEMOS = Path(__file__).resolve().parents[1] / "bench" / "function_calling" / "data" / "sft_train.jsonl"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_model):
    """``(sft_dir, rft_dir, audit_log)``: SFT on two demonstrations, then RFT on the toy env from it."""
    from agentrft.train.runner import run_job

    root = tmp_path_factory.mktemp("lineage")
    audit = AuditLog(root / "audit.jsonl")
    model, tok = tiny_model
    sft = load_config({"method": "sft", "model": "unused", "out_dir": str(root / "sft"),
                       "data": {"demonstrations_file": str(DEMOS), "limit_train": 2},
                       "lora": {"enabled": False}, "training": {"max_steps": 1, "batch_size": 2, "eval_samples": 0},
                       "optim": {"learning_rate": 5e-3, "micro_batch_size": 2},
                       "rollout": {"max_turns": 1, "max_new_tokens": 4}})
    rft = load_config({"method": "rft", "model": "unused", "out_dir": str(root / "rft"), "init_from": str(root / "sft"),
                       "data": {"env": "toy"}, "lora": {"enabled": False},
                       "training": {"max_steps": 1, "batch_size": 2, "eval_interval": 1, "eval_samples": 2},
                       "rft": {"group_size": 2}, "optim": {"learning_rate": 0.01, "micro_batch_size": 4},
                       "rollout": {"max_turns": 1, "max_new_tokens": 4, "temperature": 0.1}})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AGENTRFT_HOME", str(root))  # the runner writes to the default log
        for cfg in (sft, rft):
            run_job(cfg, model=copy.deepcopy(model), tokenizer=tok, log=lambda s: None)
    return root / "sft", root / "rft", audit


@pytest.mark.slow
def test_training_records_its_decisions_and_lineage_prints_the_chain_and_card(two_runs, tmp_path):
    sft_dir, rft_dir, audit = two_runs
    entries = audit.entries()
    assert [(e["action"], Path(e["subject"]).name) for e in entries] == [
        ("train_started", "sft"), ("train_finished", "sft"), ("train_started", "rft"), ("train_finished", "rft")]
    rft_fields = run_lineage_fields(rft_dir)
    assert entries[2]["details"]["config_hash"] == rft_fields["config_hash"]
    assert entries[2]["details"]["parent_run"] == str(sft_dir.resolve())
    assert entries[3]["details"]["final_validation"]["step"] == 1 and entries[3]["details"]["weights_hash"]

    card = tmp_path / "card.md"
    result = CliRunner().invoke(main, ["lineage", str(rft_dir), "--card", str(card), "--audit-log", str(audit.path)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert str(rft_dir.resolve()) in out and str(sft_dir.resolve()) in out and "init_from" in out
    assert f"head {audit.head()}" in out and out.count("train_finished") == 2
    text = card.read_text()
    sft_fields = run_lineage_fields(sft_dir)
    for h in (rft_fields["config_hash"], rft_fields["dataset_hash"], rft_fields["grader_hash"],
              rft_fields["base_model_hash"], sft_fields["config_hash"], sft_fields["data_hashes"]["demonstrations"]):
        assert h in text
    assert "| yes |" in text  # the demonstrations file is still the one trained on
    assert "final validation: reward" in text and "acc" in text and "calls" in text
    assert '"group_size": 2' in text and "No promotion" in text

    # a promotion that names the run, and a rollback of its alias, become part of its card
    audit.append("promote", subject="prod", details={"run_dir": str(rft_dir.resolve()),
                                                     "gates": [{"name": "reward", "passed": True}]})
    audit.append("rollback", subject="prod", details={"to": "previous"})
    audit.append("serve", subject="unrelated")
    result = CliRunner().invoke(main, ["lineage", str(rft_dir), "--audit-log", str(audit.path)])
    assert result.exit_code == 0, result.output
    assert "rollback  prod" in result.output and "unrelated" not in result.output
    assert '"passed": true' in (rft_dir / "MODEL_CARD.md").read_text()


@pytest.mark.slow
def test_a_tampered_audit_log_fails_lineage_and_verify(two_runs, tmp_path):
    sft_dir, rft_dir, audit = two_runs
    tampered = tmp_path / "audit.jsonl"
    lines = audit.path.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["details"]["status"] = "failed"  # rewrite how the SFT run ended
    lines[1] = json.dumps(entry)
    tampered.write_text("".join(line + "\n" for line in lines))

    card = tmp_path / "card.md"
    result = CliRunner().invoke(main, ["lineage", str(rft_dir), "--card", str(card), "--audit-log", str(tampered)])
    assert result.exit_code == 1
    assert "TAMPERED" in result.output and "entry seq 1 (line 2" in result.output and not card.exists()
    result = CliRunner().invoke(main, ["audit", "verify", "--audit-log", str(tampered)])
    assert result.exit_code == 1 and "edited" in result.output
    result = CliRunner().invoke(main, ["audit", "verify", "--audit-log", str(audit.path)])
    assert result.exit_code == 0 and "chain intact" in result.output


def test_an_audit_write_failure_never_fails_the_run(tmp_path, tiny_model, monkeypatch):
    from agentrft.jobs.store import RunStore
    from agentrft.train.runner import run_job

    home = tmp_path / "home"
    home.mkdir()
    (home / "audit.jsonl").write_text('{"cut off')  # a broken chain: appends are refused
    monkeypatch.setenv("AGENTRFT_HOME", str(home))
    model, tok = tiny_model
    cfg = load_config({"method": "rft", "model": "unused", "out_dir": str(tmp_path / "r"), "data": {"env": "toy"},
                       "lora": {"enabled": False}, "training": {"max_steps": 1, "batch_size": 1, "eval_samples": 0},
                       "rft": {"group_size": 2}, "rollout": {"max_turns": 1, "max_new_tokens": 2}})
    lines: list[str] = []
    result = run_job(cfg, model=copy.deepcopy(model), tokenizer=tok, log=lines.append)
    assert result.steps == 1
    assert sum("could not write" in line and "audit log" in line for line in lines) == 2
    with RunStore(tmp_path / "r") as store:
        assert [e["data"]["action"] for e in store.events("audit_error")] == ["train_started", "train_finished"]


def test_lineage_of_a_directory_without_a_run_is_an_error(tmp_path):
    result = CliRunner().invoke(main, ["lineage", str(tmp_path)])
    assert result.exit_code == 2 and "holds no run" in result.output
