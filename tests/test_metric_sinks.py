"""Metric sinks (:mod:`agentrft.jobs.sinks`): TensorBoard event files and an offline W&B run hold exactly the
store's metrics, a resume's replayed steps are purged for TensorBoard, and a sink that fails never fails the run.

The event files are read back with a reader written here (TFRecord framing checked with tensorboardX's own
CRC, events parsed with its protos), following TensorBoard's rule for a ``SessionLog.START``: events at or
after its step that were read before it are dropped. The W&B run file is read the same way (W&B's record
framing, its ``Record`` protos)."""

from __future__ import annotations

import copy
import math
import struct
from pathlib import Path

import numpy as np
import pytest

from agentrft.config import Method, load_config
from agentrft.errors import ConfigError
from agentrft.jobs.store import RunStore

JOB = {
    "method": "rft",
    "model": "unused",
    "data": {"env": "toy"},
    "lora": {"enabled": False},
    "training": {"max_steps": 3, "batch_size": 2, "eval_interval": 2, "eval_samples": 2, "checkpoint_interval": 2},
    "rft": {"group_size": 2},
    "optim": {"learning_rate": 0.01, "micro_batch_size": 8},
    "rollout": {"max_turns": 1, "max_new_tokens": 6, "temperature": 0.7},
}


def job(out_dir: Path, *, steps: int = 3, **sinks) -> dict:
    cfg = copy.deepcopy(JOB)
    cfg["out_dir"] = str(out_dir)
    cfg["training"]["max_steps"] = steps
    cfg["sinks"] = sinks
    return cfg


def train(cfg: dict, tiny_model, **kwargs):
    from agentrft.train.runner import run_job

    model, tok = tiny_model
    return run_job(load_config(cfg), model=copy.deepcopy(model), tokenizer=tok, log=lambda s: None, **kwargs)


def store_metrics(run_dir: Path) -> dict[str, dict[int, float]]:
    """``{"SPLIT/NAME": {step: value}}`` from run.db: the source of truth."""
    with RunStore(run_dir) as store:
        rows = store.metrics()
    out: dict[str, dict[int, float]] = {}
    for r in rows:
        out.setdefault(f"{r['split']}/{r['name']}", {})[r["step"]] = r["value"]
    return out


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


# -- TensorBoard event files -------------------------------------------------------------------------------

def read_records(path: Path) -> list[bytes]:
    """TFRecord framing: u64 length, masked CRC32C of it, the data, masked CRC32C of the data."""
    from tensorboardX.record_writer import masked_crc32c

    data, pos, out = path.read_bytes(), 0, []
    while pos < len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == masked_crc32c(header)
        body = data[pos + 12:pos + 12 + length]
        assert struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])[0] == masked_crc32c(body)
        out.append(body)
        pos += 16 + length
    return out


def tensorboard_scalars(logdir: Path, *, purge: bool = True) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` over the event files in name order (TensorBoard's order); with
    ``purge``, a ``SessionLog.START`` at step S drops what was read before it at steps >= S."""
    from tensorboardX.proto.event_pb2 import Event, SessionLog

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        for raw in read_records(path):
            event = Event.FromString(raw)
            if event.HasField("session_log") and event.session_log.status == SessionLog.START and purge:
                scalars = {tag: [(s, v) for s, v in points if s < event.step] for tag, points in scalars.items()}
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def assert_tensorboard_equals_store(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    tb = tensorboard_scalars(run_dir / "tensorboard")
    truth = store_metrics(run_dir)
    assert set(tb) == set(truth)
    for tag, by_step in truth.items():
        steps = [s for s, _ in tb[tag]]
        assert steps == sorted(by_step), f"{tag}: steps {steps} != {sorted(by_step)}"
        for step, value in tb[tag]:  # simple_value is a float32
            assert same(value, float(np.float32(by_step[step]))), (tag, step, value, by_step[step])
    return tb


def test_tensorboard_scalars_equal_the_stores_metrics(tmp_path, tiny_model):
    result = train(job(tmp_path / "run", tensorboard=True), tiny_model)
    assert result.steps == 3
    tb = assert_tensorboard_equals_store(tmp_path / "run")
    assert [s for s, _ in tb["train/loss"]] == [1, 2, 3]
    assert [s for s, _ in tb["validation/reward_mean"]] == [2, 3]
    with RunStore(tmp_path / "run") as store:
        assert store.events("sink_failed") == []


def test_a_resume_purges_the_replayed_steps_for_tensorboard(tmp_path, tiny_model, monkeypatch):
    """Steps 1-2 checkpointed, step 3 logged, crash in step 4; the resume replays 3 and 4. TensorBoard (which
    honours the START session log) then shows each step once, equal to the store; a reader that ignores
    session logs sees step 3 twice, from each start."""
    import agentrft.train.runner as runner

    real_methods = runner._methods

    class CrashAtStep4:
        def __init__(self, method):
            self.method = method

        def prepare(self, *args):
            return self.method.prepare(*args)

        def step(self, ctx, batch, step):
            if step == 4:
                raise RuntimeError("simulated crash")
            return self.method.step(ctx, batch, step)

    cfg = job(tmp_path / "run", steps=4, tensorboard=True)
    monkeypatch.setattr(runner, "_methods", lambda: {**real_methods(),
                                                     Method.RFT: CrashAtStep4(real_methods()[Method.RFT])})
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, tiny_model)
    monkeypatch.setattr(runner, "_methods", real_methods)
    assert len(list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))) == 1

    result = train(cfg, tiny_model, resume=True)
    assert result.steps == 4
    assert len(list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))) == 2
    tb = assert_tensorboard_equals_store(tmp_path / "run")
    assert [s for s, _ in tb["train/loss"]] == [1, 2, 3, 4]
    raw = tensorboard_scalars(tmp_path / "run" / "tensorboard", purge=False)
    assert [s for s, _ in raw["train/loss"]] == [1, 2, 3, 3, 4]


def test_a_sink_that_cannot_write_warns_once_and_the_run_completes(tmp_path, tiny_model, monkeypatch):
    # cannot start: RUN_DIR/tensorboard is a file (root ignores permissions, so a mode bit would prove nothing)
    (tmp_path / "blocked").mkdir()
    (tmp_path / "blocked" / "tensorboard").write_text("in the way")
    result = train(job(tmp_path / "blocked", tensorboard=True), tiny_model)
    assert result.status == "completed" and result.steps == 3
    with RunStore(tmp_path / "blocked") as store:
        (event,) = store.events("sink_failed")
        assert event["data"]["sink"] == "tensorboard" and "starting" in event["message"]
        assert store.get_run()["status"] == "completed"
        assert sorted(store.metrics_frame("train")) == [1, 2, 3]

    # fails mid-run (a full disk at step 2): one event, the sink is off, the run and the store go on
    from agentrft.jobs.sinks import TensorBoardSink

    real_write, calls = TensorBoardSink.write, []

    def full_disk(self, step, metrics, split):
        calls.append((step, split))
        if step == 2:
            raise OSError(28, "No space left on device")
        real_write(self, step, metrics, split)

    monkeypatch.setattr(TensorBoardSink, "write", full_disk)
    result = train(job(tmp_path / "full", tensorboard=True), tiny_model)
    assert result.status == "completed" and result.steps == 3
    assert calls == [(1, "train"), (2, "train")]  # switched off after its first failure
    with RunStore(tmp_path / "full") as store:
        (event,) = store.events("sink_failed")
        assert event["step"] == 2 and "No space left on device" in event["message"]
        assert sorted(store.metrics_frame("train")) == [1, 2, 3]
        assert sorted(store.metrics_frame("validation")) == [2, 3]
    tb = tensorboard_scalars(tmp_path / "full" / "tensorboard")
    assert [s for s, _ in tb["train/loss"]] == [1]  # what was written before the failure stays readable


# -- W&B offline -------------------------------------------------------------------------------------------

def wandb_history(run_file: Path) -> list[dict[str, float]]:
    """The ``history`` records of a ``run-<id>.wandb`` file: a 7-byte header (``:W&B``, magic, version),
    then 32 KiB blocks of records (CRC32, u16 length, type: full/first/middle/last), each a ``Record``."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending, rows = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # zero padding up to the block's end
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record.FromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): float(item.value_json)
                             for item in record.history.item})
    return rows


def test_wandb_offline_writes_the_run_locally_with_the_stores_metrics(tmp_path, tiny_model, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb sink is optional: pip install wandb")  # see the report
    monkeypatch.setenv("WANDB_MODE", "online")  # the section's mode wins over the environment
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "true")
    monkeypatch.setenv("WANDB_API_KEY", "")  # no credentials: an attempt to log in would fail the start
    result = train(job(tmp_path / "run", wandb={"project": "sinks-test"}), tiny_model)
    assert result.status == "completed"
    with RunStore(tmp_path / "run") as store:
        assert store.events("sink_failed") == []

    (folder,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    (run_file,) = folder.glob("run-*.wandb")
    logged: dict[str, dict[int, float]] = {}
    for row in wandb_history(run_file):
        for key, value in row.items():
            if "/" in key:
                logged.setdefault(key, {})[int(row["step"])] = value
    truth = store_metrics(tmp_path / "run")
    assert logged.keys() == truth.keys()
    for key, by_step in truth.items():
        assert logged[key].keys() == by_step.keys(), key
        assert all(same(logged[key][step], value) for step, value in by_step.items()), key
    assert sorted(logged["train/loss"]) == [1, 2, 3] and sorted(logged["validation/reward_mean"]) == [2, 3]


def test_wandb_disabled_writes_nothing(tmp_path, tiny_model):
    result = train(job(tmp_path / "run", steps=1, wandb={"mode": "disabled"}), tiny_model)
    assert result.status == "completed" and not (tmp_path / "run" / "wandb").exists()


# -- config ------------------------------------------------------------------------------------------------

def test_sinks_config_is_typed_and_offline_only():
    cfg = load_config({"method": "rft", "sinks": {"tensorboard": True, "wandb": {}}})
    assert cfg.sinks.tensorboard and cfg.sinks.wandb.mode == "offline" and cfg.sinks.wandb.dir is None
    assert load_config({"method": "rft"}).sinks.wandb is None
    with pytest.raises(ConfigError, match=r"sinks\.wandb\.mode: .*'online': only 'offline' or 'disabled'"):
        load_config({"method": "rft", "sinks": {"wandb": {"mode": "online"}}})
    with pytest.raises(ConfigError, match=r"sinks\.tensorbord: unknown key"):
        load_config({"method": "rft", "sinks": {"tensorbord": True}})


def test_a_sink_whose_package_is_missing_stops_the_start_with_the_pip_line(tmp_path, tiny_model, monkeypatch):
    import agentrft.jobs.sinks as sinks

    real = sinks._installed
    monkeypatch.setattr(sinks, "_installed", lambda package: package != "wandb" and real(package))
    with pytest.raises(ConfigError, match=r"sinks\.wandb needs the 'wandb' package.*pip install wandb"):
        train(job(tmp_path / "run", wandb={}), tiny_model)
    assert not (tmp_path / "run").exists()  # refused before the run directory exists
