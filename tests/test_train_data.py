"""A training job's data files: every invalid row is reported as ``file:line: reason`` and stops the job unless
``data.skip_invalid_rows``; rows are bounded in size without being held whole."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from agentrft.cli import main
from agentrft.jobs.store import RunStore

GOOD = {"messages": [{"role": "user", "content": "Say something about rivers."}]}
BAD_LINES = [
    "{not json",
    json.dumps({"messages": []}),
    json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}),
    json.dumps({"messages": [{"role": "user", "content": 3}]}),
    json.dumps({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}),
    json.dumps([1, 2]),
    json.dumps({"prompt": "no messages"}),
]


def task_file(path: Path) -> Path:
    lines = [json.dumps(GOOD), *BAD_LINES, json.dumps({**GOOD, "id": "second"})]  # 7 bad rows of 9
    path.write_text("\n".join(lines) + "\n")
    return path


def config(tmp_path: Path, model_dir: Path, **data) -> Path:
    cfg = {"method": "rft", "model": str(model_dir), "out_dir": str(tmp_path / "run"),
           "data": {"env": "toy", "train_file": str(task_file(tmp_path / "tasks.jsonl")), **data},
           "training": {"max_steps": 1, "batch_size": 2, "eval_samples": 0}, "rft": {"group_size": 2},
           "rollout": {"max_turns": 1, "max_new_tokens": 4}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from agentrft.models.loading import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_invalid_rows_stop_the_job_and_are_each_named(tmp_path, model_dir):
    res = CliRunner().invoke(main, ["train", str(config(tmp_path, model_dir))])
    assert res.exit_code == 2, res.output
    assert "7 invalid row(s)" in res.output and "data.skip_invalid_rows: true" in res.output
    for line in range(2, 9):
        assert f"tasks.jsonl:{line}: " in res.output
    assert not (tmp_path / "run").exists()  # refused before the run directory was made: a fixed re-run just works


def test_skip_invalid_rows_trains_on_the_rest_and_records_each_skipped_row(tmp_path, model_dir):
    res = CliRunner().invoke(main, ["train", str(config(tmp_path, model_dir, skip_invalid_rows=True))])
    assert res.exit_code == 0, res.output
    assert res.output.count("skipped ") == 7
    with RunStore(tmp_path / "run") as store:
        (event,) = [e for e in store.events() if e["kind"] == "invalid_rows"]
        assert event["data"]["count"] == 7 and len(event["data"]["rows"]) == 7
        assert {t["task_id"] for t in store.trajectories()} <= {"tasks-1", "second"}


def test_an_oversized_row_is_rejected_without_being_held_whole(tmp_path):
    from agentrft.datasets import MAX_ROW_BYTES

    huge = tmp_path / "huge.jsonl"
    with huge.open("wb") as f:
        f.write((json.dumps(GOOD) + "\n").encode())
        f.write(b'{"messages": [{"role": "user", "content": "' + b"x" * (8 * MAX_ROW_BYTES) + b'"}]}\n')
        f.write((json.dumps({**GOOD, "id": "last"}) + "\n").encode())
    code = ("import resource, sys; from agentrft.datasets import load_jsonl_dataset; "
            "r = load_jsonl_dataset(sys.argv[1]); "
            "print(len(r.rows), r.errors[0].line, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)")
    out = subprocess.run([sys.executable, "-c", code, str(huge)], capture_output=True, text=True, check=True)
    rows, bad_line, peak_mb = map(int, out.stdout.split())
    assert (rows, bad_line) == (2, 2)
    small = tmp_path / "small.jsonl"
    small.write_text(json.dumps(GOOD) + "\n")
    base = subprocess.run([sys.executable, "-c", code.replace("r.errors[0].line", "0"), str(small)],
                          capture_output=True, text=True, check=True)
    base_mb = int(base.stdout.split()[2])
    assert peak_mb - base_mb < 3 * MAX_ROW_BYTES // 2**20, (peak_mb, base_mb)  # a 64 MiB line never held whole
