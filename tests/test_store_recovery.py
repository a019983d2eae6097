"""A damaged run store is found before a resume and never silently replaced; ``--rebuild-store`` recovers."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from agentrft.cli import main
from agentrft.jobs.store import RunStore


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from agentrft.models.loading import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def trained_run(tmp_path: Path, model_dir: Path, steps: int = 2) -> tuple[Path, Path]:
    cfg = {"method": "rft", "model": str(model_dir), "out_dir": str(tmp_path / "run"), "data": {"env": "toy"},
           "training": {"max_steps": steps, "batch_size": 2, "eval_samples": 0, "checkpoint_interval": 1},
           "rft": {"group_size": 2}, "rollout": {"max_turns": 1, "max_new_tokens": 4},
           "optim": {"learning_rate": 0.01}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(main, ["train", str(path)])
    assert res.exit_code == 0, res.output
    return path, tmp_path / "run"


def empty_the_store(run: Path) -> None:
    (run / "run.db").write_bytes(b"")
    for suffix in ("-wal", "-shm"):
        Path(f"{run / 'run.db'}{suffix}").unlink(missing_ok=True)


@pytest.mark.slow
def test_an_emptied_store_stops_the_resume_then_rebuild_continues_from_the_checkpoints(tmp_path, model_dir):
    cfg, run = trained_run(tmp_path, model_dir)
    empty_the_store(run)
    res = CliRunner().invoke(main, ["train", str(cfg), "--resume", "--set", "training.max_steps=3"])
    assert res.exit_code == 2, res.output
    assert "run.db is empty but checkpoints/ holds steps 2" in res.output and "--rebuild-store" in res.output
    assert (run / "run.db").stat().st_size == 0  # left as it was: not recreated as a fresh store

    res = CliRunner().invoke(main, ["train", str(cfg), "--resume", "--rebuild-store", "--set", "training.max_steps=3"])
    assert res.exit_code == 0, res.output
    assert "store rebuilt from the checkpoints of steps 2" in res.output
    assert len(list(run.glob("run.db.damaged-*"))) == 1
    with RunStore(run) as store:
        assert [e["kind"] for e in store.events() if e["kind"] == "store_rebuilt"] == ["store_rebuilt"]
        assert [c["step"] for c in store.checkpoints()] == [2, 3]  # retention kept the latest of steps 1-2
        assert {t["step"] for t in store.trajectories()} == {3}  # only what ran after the rebuild
        assert store.get_run()["status"] == "completed"


@pytest.mark.slow
def test_a_store_that_is_not_a_database_is_named_not_overwritten(tmp_path, model_dir):
    cfg, run = trained_run(tmp_path, model_dir, steps=1)
    garbage = b"this is not a sqlite database " * 100
    (run / "run.db").write_bytes(garbage)
    for suffix in ("-wal", "-shm"):
        Path(f"{run / 'run.db'}{suffix}").unlink(missing_ok=True)
    res = CliRunner().invoke(main, ["train", str(cfg), "--resume"])
    assert res.exit_code == 2 and "is not a readable SQLite database" in res.output, res.output
    res = CliRunner().invoke(main, ["eval", "--model", str(run), "--env", "toy", "--limit", "1", "--out",
                                    str(tmp_path / "eval")])
    assert res.exit_code == 2 and "is not a readable run store" in res.output, res.output
    assert (run / "run.db").read_bytes() == garbage


def test_rebuild_store_needs_resume(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"method": "rft", "out_dir": str(tmp_path / "run")}))
    res = CliRunner().invoke(main, ["train", str(cfg), "--rebuild-store"])
    assert res.exit_code == 2 and "needs --resume" in res.output
