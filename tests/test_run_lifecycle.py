"""How a training process meets the world: one job per run directory, SIGTERM, and a full disk.

Each runs the real ``agentrft train`` in a subprocess on the tiny model."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from agentrft.jobs.store import RunStore

AGENTRFT = [sys.executable, "-m", "agentrft.cli"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from agentrft.models.loading import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def config(tmp_path: Path, model_dir: Path, run_dir: Path, steps: int, **training) -> Path:
    cfg = {"method": "rft", "model": str(model_dir), "out_dir": str(run_dir), "data": {"env": "toy"},
           "lora": {"enabled": False},
           "training": {"max_steps": steps, "batch_size": 2, "eval_samples": 0, "checkpoint_interval": 1,
                        "cpu_matmul": "mkl", **training},
           "rft": {"group_size": 2}, "rollout": {"max_turns": 1, "max_new_tokens": 6}, "optim": {"learning_rate": 0.01}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, step: int = 1, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    latest = run_dir / "checkpoints" / "latest"
    while time.time() < deadline:
        if latest.exists() and int(latest.read_text().strip().split("-")[-1]) >= step:
            return
        if proc.poll() is not None:
            pytest.fail(f"training ended before step {step}: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.05)
    pytest.fail("no checkpoint in time")


@pytest.mark.slow
def test_a_second_job_on_a_live_run_directory_is_refused(tmp_path, model_dir):
    run_dir = tmp_path / "run"
    cfg = config(tmp_path, model_dir, run_dir, steps=1000)  # still running when the second job starts
    first = subprocess.Popen([*AGENTRFT, "train", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_checkpoint(run_dir, first)
        second = subprocess.run([*AGENTRFT, "train", str(cfg), "--resume"], capture_output=True, text=True, timeout=600)
        assert first.poll() is None, "the first run ended before the second job started: nothing was tested"
        assert second.returncode == 2, second.stderr
        assert f"is in use by another training process (pid {first.pid}" in second.stderr
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    with RunStore(run_dir) as store:
        per_step: dict[int, int] = {}
        for t in store.trajectories():
            per_step[t["step"]] = per_step.get(t["step"], 0) + 1
        assert per_step and set(per_step.values()) == {2 * 2}  # tasks x group per step: nothing trained twice


@pytest.mark.slow
def test_sigterm_stops_the_run_with_a_status_and_a_message_then_it_resumes(tmp_path, model_dir):
    run_dir = tmp_path / "run"
    cfg = config(tmp_path, model_dir, run_dir, steps=40)
    proc = subprocess.Popen([*AGENTRFT, "train", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(run_dir, proc, step=2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM during step" in err and "--resume" in err and "Traceback" not in err
    with RunStore(run_dir) as store:
        run = store.get_run()
        assert run["status"] == "stopped" and "SIGTERM" in run["message"] and "is intact" in run["message"]
    again = subprocess.run([*AGENTRFT, "train", str(cfg), "--resume", "--allow-config-change",
                            "--set", "training.max_steps=3"],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]


def _unshare_mount_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _unshare_mount_works(), reason="needs unshare -rm to mount a small tmpfs")
def test_a_full_disk_is_named_and_the_last_checkpoint_survives(tmp_path, model_dir):
    """The run directory lives on a 4 MiB tmpfs (its own mount namespace): run.db fits, a 12 MiB checkpoint does not."""
    disk = tmp_path / "disk"
    disk.mkdir()
    cfg = config(tmp_path, model_dir, disk / "run", steps=2)
    script = f"mount -t tmpfs -o size=4m tmpfs {disk} && exec {' '.join(AGENTRFT)} train {cfg}"
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "could not write the checkpoint of step 1" in proc.stderr and "the disk is full" in proc.stderr
    assert "Traceback" not in proc.stderr and "unexpected pos" not in proc.stderr
    assert "no earlier checkpoint exists" in proc.stderr and "--resume" in proc.stderr
