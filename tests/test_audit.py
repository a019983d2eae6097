"""The audit log's hash chain: intact logs verify, and every kind of tampering is named.

Edited, deleted, reordered and cut-off entries each make :meth:`AuditLog.verify` name the entry; a broken
chain is never extended; two processes appending at once keep one valid chain.
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from agentrft.jobs.audit import (GENESIS, AuditChainBroken, AuditLog, AuditTampered, audit_home,
                                 run_lineage_fields, verify_or_raise)
from agentrft.jobs.store import RunStore


def _log(tmp_path: Path, n: int = 4) -> AuditLog:
    log = AuditLog(tmp_path / "audit.jsonl")
    for i in range(n):
        log.append("promote" if i % 2 else "train_started", subject=f"runs/r{i}", details={"i": i, "path": tmp_path},
                   actor="tester@host")
    return log


def _rewrite(log: AuditLog, lines: list[str]) -> None:
    log.path.write_text("".join(line + "\n" for line in lines))


def test_appended_entries_form_a_chain_that_verifies(tmp_path):
    log = _log(tmp_path)
    entries = log.entries()
    assert [e["seq"] for e in entries] == [0, 1, 2, 3]
    assert entries[0]["prev_hash"] == GENESIS
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(entries, entries[1:]))
    assert entries[1]["actor"] == "tester@host" and entries[1]["details"] == {"i": 1, "path": str(tmp_path)}
    assert entries[0]["time"].endswith("+00:00")
    assert log.verify() == [] and log.head() == entries[-1]["hash"]
    assert log.verify(expected_head=entries[1]["hash"]) == []
    assert "@" in AuditLog(tmp_path / "other.jsonl").append("serve", subject="prod")["actor"]


def test_an_edited_entry_is_detected_and_named(tmp_path):
    log = _log(tmp_path)
    lines = log.path.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["details"]["i"] = 99  # a changed gate result, say
    lines[1] = json.dumps(entry)
    _rewrite(log, lines)
    problems = log.verify()
    assert len(problems) == 1 and "entry seq 1 (line 2" in problems[0] and "edited" in problems[0]
    with pytest.raises(AuditTampered, match="seq 1"):
        log.verify_or_raise()
    with pytest.raises(AuditTampered):
        verify_or_raise(log.path)


def test_an_edit_that_recomputes_its_hash_breaks_the_next_link(tmp_path):
    from agentrft.jobs.store import hash_json

    log = _log(tmp_path)
    lines = log.path.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["actor"] = "someone-else@host"
    entry["hash"] = hash_json({k: v for k, v in entry.items() if k != "hash"})
    lines[1] = json.dumps(entry)
    _rewrite(log, lines)
    problems = log.verify()
    assert len(problems) == 1 and "entry seq 2 (line 3" in problems[0] and "prev_hash" in problems[0]


def test_deleted_and_reordered_entries_are_detected(tmp_path):
    log = _log(tmp_path)
    lines = log.path.read_text().splitlines()
    _rewrite(log, [lines[0], lines[2], lines[3]])
    problems = log.verify()
    assert any("seq 2 follows seq 0" in p for p in problems) and any("prev_hash" in p for p in problems)
    _rewrite(log, [lines[0], lines[2], lines[1], lines[3]])
    assert any("seq 2 (line 2" in p for p in log.verify()) and any("seq 1 (line 3" in p for p in log.verify())


def test_a_truncated_tail_is_detected_and_not_extended(tmp_path):
    log = _log(tmp_path)
    data = log.path.read_bytes()
    log.path.write_bytes(data[:-20])
    problems = log.verify()
    assert any("line 4" in p and "incomplete" in p for p in problems)
    with pytest.raises(AuditChainBroken, match="cut off"):
        log.append("serve", subject="prod")
    assert log.path.read_bytes() == data[:-20]  # nothing written


def test_an_edited_last_entry_is_never_extended(tmp_path):
    log = _log(tmp_path, 2)
    lines = log.path.read_text().splitlines()
    lines[-1] = lines[-1].replace('"promote"', '"rollback"')
    _rewrite(log, lines)
    with pytest.raises(AuditChainBroken, match="does not match its hash"):
        log.append("serve", subject="prod")


def test_an_anchored_head_detects_a_removed_tail(tmp_path):
    log = _log(tmp_path)
    head = log.head()
    lines = log.path.read_text().splitlines()
    _rewrite(log, lines[:-1])  # the rest still chains: only the anchor shows it
    assert log.verify() == []
    assert "anchored head" in log.verify(expected_head=head)[0]


def _append_many(path: str, tag: str, n: int) -> None:
    log = AuditLog(path)
    for i in range(n):
        log.append("serve", subject=f"{tag}-{i}")


def test_concurrent_appends_from_two_processes_keep_one_valid_chain(tmp_path):
    path = str(tmp_path / "audit.jsonl")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(path, tag, 25)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    log = AuditLog(path)
    assert log.verify() == []
    assert sorted(e["subject"] for e in log.entries()) == sorted(f"{t}-{i}" for t in "ab" for i in range(25))


def test_audit_home_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTRFT_HOME", str(tmp_path / "home"))
    assert audit_home() == tmp_path / "home" and audit_home().is_dir()
    assert AuditLog().path == tmp_path / "home" / "audit.jsonl"


def test_run_lineage_fields_reads_the_hashes_the_run_recorded(tmp_path):
    with RunStore(tmp_path / "run") as store:
        store.create_run("run", "rft", {"model": "tiny", "init_from": str(tmp_path / "sft")},
                         {"dataset": "d", "grader": "g", "base_model": "b", "config": "c", "demonstrations": "x"})
    fields = run_lineage_fields(tmp_path / "run")
    assert fields["config_hash"] == "c" and fields["dataset_hash"] == "d" and fields["grader_hash"] == "g"
    assert fields["base_model_hash"] == "b" and fields["data_hashes"] == {"demonstrations": "x"}
    assert fields["parent_run"] == str((tmp_path / "sft").resolve()) and fields["weights_hash"] is None
    with pytest.raises(FileNotFoundError):
        run_lineage_fields(tmp_path / "nothing")
