"""The run store: schema, runs, events, metrics (idempotent per step), trajectories, checkpoints, hashes."""

from __future__ import annotations

import hashlib
import math
import sqlite3
import threading

import numpy as np
import pytest

from agentrft.jobs.store import SCHEMA_VERSION, RunStore, StoreError, hash_file, hash_json
from agentrft.types import Grade, StopReason, Trajectory


@pytest.fixture
def store(tmp_path):
    s = RunStore(tmp_path / "run")
    yield s
    s.close()


def make_run(store: RunStore) -> None:
    store.create_run("run-1", "rft", {"seed": 1, "optim": {"lr": 1e-5}},
                     {"dataset": "d" * 64, "grader": "g" * 64, "base_model": "b" * 64, "config": "c" * 64},
                     created_at=123.0)


def test_creates_dir_and_wal_database_with_schema_version(tmp_path):
    run_dir = tmp_path / "a" / "b"
    RunStore(run_dir).close()
    db = run_dir / "run.db"
    assert db.is_file()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    conn.close()


def test_reopening_is_idempotent_and_keeps_data(tmp_path):
    with RunStore(tmp_path) as s:
        make_run(s)
        s.log_metrics(1, {"loss": 0.5})
    with RunStore(tmp_path) as s:
        assert s.schema_version == SCHEMA_VERSION
        assert s.get_run()["run_id"] == "run-1"
        assert s.metrics("loss")[0]["value"] == 0.5
    conn = sqlite3.connect(tmp_path / "run.db")
    assert conn.execute("SELECT count(*) FROM schema_version").fetchone()[0] == 1
    conn.close()


def test_newer_schema_is_refused(tmp_path):
    RunStore(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "run.db")
    conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        RunStore(tmp_path)


def test_run_row_roundtrip_and_status_history(store):
    assert store.get_run() is None
    with pytest.raises(StoreError, match="create_run"):
        store.set_status("running")
    make_run(store)
    run = store.get_run()
    assert run["method"] == "rft" and run["status"] == "running" and run["created_at"] == 123.0
    assert run["resolved_config"] == {"seed": 1, "optim": {"lr": 1e-5}}
    assert run["hashes"]["config"] == "c" * 64
    assert (run["dataset_hash"], run["grader_hash"], run["base_model_hash"]) == ("d" * 64, "g" * 64, "b" * 64)

    store.set_status("failed", "boom")
    store.set_status("completed")
    run = store.get_run()
    assert (run["status"], run["message"]) == ("completed", None)
    assert [e["data"]["status"] for e in store.events("status")] == ["failed", "completed"]
    with pytest.raises(ValueError):
        store.set_status("exploded")  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="already holds"):
        make_run(store)


def test_events_keep_order_data_and_step(store):
    store.log_event("resume", "resumed from step 10", {"path": "/x"}, step=10)
    store.log_event("nonfinite_skip", "step 11 skipped", step=11)
    store.log_event("early_stop", "plateau")
    evs = store.events()
    assert [(e["kind"], e["step"], e["data"]) for e in evs] == [
        ("resume", 10, {"path": "/x"}), ("nonfinite_skip", 11, None), ("early_stop", None, None)]
    assert [e["message"] for e in store.events("early_stop")] == ["plateau"]


def test_metrics_relogging_a_step_replaces_rows(store):
    store.log_metrics(1, {"loss": 1.0, "reward_mean": 0.1})
    store.log_metrics(2, {"loss": 0.8, "reward_mean": 0.2})
    store.log_metrics(2, {"reward_mean": 0.5}, split="validation")
    # a resume from step 1 replays step 2 with different numbers
    store.log_metrics(2, {"loss": 0.7, "reward_mean": 0.3})
    rows = store.metrics(split="train")
    assert [(r["step"], r["name"], r["value"]) for r in rows] == [
        (1, "loss", 1.0), (1, "reward_mean", 0.1), (2, "loss", 0.7), (2, "reward_mean", 0.3)]
    assert [r["value"] for r in store.metrics("reward_mean")] == [0.1, 0.3, 0.5]
    assert store.metrics("reward_mean", split="validation")[0]["split"] == "validation"
    assert store.metrics_frame() == {1: {"loss": 1.0, "reward_mean": 0.1}, 2: {"loss": 0.7, "reward_mean": 0.3}}
    assert store.metrics_frame(split=None)[2] == {"train/loss": 0.7, "train/reward_mean": 0.3,
                                                   "validation/reward_mean": 0.5}


def test_metrics_accept_numeric_scalars_and_keep_nan(store):
    store.log_metrics(3, {"loss": float("nan"), "skipped": True, "n": np.int64(4), "x": np.float32(0.5),
                          "inf": float("inf")})
    got = {r["name"]: r["value"] for r in store.metrics()}
    assert math.isnan(got["loss"]) and got["skipped"] == 1.0 and got["n"] == 4.0 and got["x"] == 0.5
    assert got["inf"] == float("inf")
    with pytest.raises(TypeError, match="not a number"):
        store.log_metrics(3, {"bad": "high"})


def _record(task_id: str, group_index: int, reward: float) -> dict:
    t = Trajectory(task_id=task_id, messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}],
                   group_index=group_index, stop_reason=StopReason.ANSWER)
    t.append_tokens([1, 2], "prompt")
    t.append_tokens([3], "sampled", [-0.25])
    g = Grade(reward=reward, sub_rewards={"exact": reward})
    return {**t.to_dict(), "grade": g.to_dict(), "reward": g.reward}


def test_trajectories_roundtrip_with_indexed_columns(store):
    recs1 = [_record("t1", 0, 1.0), _record("t1", 1, 0.0)]
    recs2 = [_record("t2", 0, 0.5)]
    store.log_trajectories(1, recs1)
    store.log_trajectories(2, recs2)
    got = store.trajectories()
    assert [r["trace_id"] for r in got] == [r["trace_id"] for r in recs1 + recs2]
    assert got[0]["step"] == 1 and got[2]["step"] == 2
    back = Trajectory.from_dict({k: v for k, v in got[0].items() if k not in ("grade", "reward", "step", "split")})
    assert back.token_kinds == ["prompt", "prompt", "sampled"] and back.logprobs == [None, None, -0.25]
    assert got[1]["grade"]["reward"] == 0.0
    assert [r["task_id"] for r in store.trajectories(step=2)] == ["t2"]
    assert len(store.trajectories(limit=2)) == 2

    conn = sqlite3.connect(store.db_path)
    cols = conn.execute("SELECT step, task_id, trace_id, group_index, reward FROM trajectories ORDER BY id").fetchall()
    indexes = {r[1] for r in conn.execute("PRAGMA index_list(trajectories)")}
    conn.close()
    assert cols[1] == (1, "t1", recs1[1]["trace_id"], 1, 0.0)
    assert {"trajectories_step", "trajectories_task", "trajectories_reward"} <= indexes

    store.log_trajectories(1, [{**recs1[0], "reward": 0.25}])  # same trace id: replaced, not duplicated
    assert len(store.trajectories()) == 3
    assert [r["reward"] for r in store.trajectories(step=1) if r["trace_id"] == recs1[0]["trace_id"]] == [0.25]


def test_validation_trajectories_are_kept_apart_from_training_samples(store):
    store.log_trajectories(2, [_record("t1", 0, 1.0), _record("t1", 1, 0.0)])
    store.log_trajectories(2, [_record("v1", 0, 0.5)], split="validation")
    assert [r["task_id"] for r in store.trajectories(step=2)] == ["t1", "t1"]  # default: training samples
    val = store.trajectories(split="validation")
    assert [(r["task_id"], r["step"], r["split"]) for r in val] == [("v1", 2, "validation")]
    assert [r["split"] for r in store.trajectories(split=None)] == ["train", "train", "validation"]
    store.discard_after(1)
    assert store.trajectories(split=None) == []


def test_a_version_1_store_is_migrated_and_its_rows_read_as_training_samples(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    conn = sqlite3.connect(run / "run.db")
    conn.executescript("""
        CREATE TABLE schema_version (version INTEGER NOT NULL);
        INSERT INTO schema_version VALUES (1);
        CREATE TABLE trajectories (id INTEGER PRIMARY KEY AUTOINCREMENT, step INTEGER NOT NULL, task_id TEXT,
            trace_id TEXT UNIQUE, group_index INTEGER, reward REAL, time REAL NOT NULL, data TEXT NOT NULL);
        INSERT INTO trajectories (step, task_id, trace_id, group_index, reward, time, data)
            VALUES (1, 't0', 'abc', 0, 1.0, 0.0, '{"task_id": "t0"}');
    """)
    conn.close()
    with RunStore(run) as s:
        assert s.schema_version == SCHEMA_VERSION == 2
        assert [(r["task_id"], r["split"]) for r in s.trajectories()] == [("t0", "train")]
        s.log_trajectories(1, [_record("v", 0, 0.0)], split="validation")
        assert len(s.trajectories(split="validation")) == 1
    with RunStore(run) as s:  # reopening a migrated store is a no-op
        assert len(s.trajectories(split=None)) == 2


def test_discard_after_forgets_replayed_steps(store):
    for step in (1, 2, 3):
        store.log_metrics(step, {"loss": float(step)})
        store.log_trajectories(step, [_record(f"t{step}", 0, 1.0)])
    store.discard_after(1)
    assert [r["step"] for r in store.metrics()] == [1]
    assert [r["step"] for r in store.trajectories()] == [1]


def test_checkpoint_rows(store, tmp_path):
    kept = tmp_path / "run" / "checkpoints" / "step-000002"
    kept.mkdir(parents=True)
    store.record_checkpoint(1, tmp_path / "gone", None, is_best=False)
    store.record_checkpoint(2, kept, 0.75, is_best=True)
    store.record_checkpoint(2, kept, 0.8, is_best=True)  # re-saved after a resume: one row
    rows = store.checkpoints()
    assert [(r["step"], r["metric"], r["is_best"], r["exists"]) for r in rows] == [
        (1, None, False, False), (2, 0.8, True, True)]


def test_concurrent_writers_from_threads(store):
    def worker(k: int) -> None:
        for step in range(50):
            store.log_metrics(step, {f"m{k}": float(step)})
            store.log_event("tick", f"{k}/{step}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.metrics()) == 6 * 50
    assert len(store.events("tick")) == 6 * 50


def test_a_second_connection_reads_while_the_store_writes(store):
    make_run(store)
    store.log_metrics(1, {"loss": 1.0})
    reader = sqlite3.connect(store.db_path)
    assert reader.execute("SELECT value FROM metrics").fetchall() == [(1.0,)]
    reader.execute("BEGIN")  # an open read transaction does not block the writer under WAL
    reader.execute("SELECT count(*) FROM metrics").fetchone()
    store.log_metrics(2, {"loss": 0.5})
    reader.execute("COMMIT")
    assert reader.execute("SELECT count(*) FROM metrics").fetchone()[0] == 2
    reader.close()


def test_hash_helpers(tmp_path):
    p = tmp_path / "data.jsonl"
    p.write_bytes(b'{"a": 1}\n' * 1000)
    assert hash_file(p) == hashlib.sha256(p.read_bytes()).hexdigest()
    assert hash_json({"a": 1, "b": [1, 2]}) == hash_json({"b": [1, 2], "a": 1})
    assert hash_json({"a": 1}) != hash_json({"a": 2})
    assert len(hash_json([])) == 64
