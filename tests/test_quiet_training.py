"""Training's own noise: no FutureWarning from agentrft's calls into transformers and peft, no progress bar
left open over what is printed after a run, and exports that follow the user's umask."""

from __future__ import annotations

import logging
import os
import stat
import warnings
from pathlib import Path

import pytest

from agentrft.config import load_config


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from agentrft.models.loading import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.slow
def test_sft_and_rft_steps_raise_no_future_warning_and_close_their_bars(tmp_path, model_dir):
    from tqdm import tqdm
    from transformers.utils import logging as hf_logging

    from agentrft.train.runner import run_job

    jobs = [
        {"method": "sft", "data": {"env": "finance", "demonstrations": "efficient", "limit_train": 2, "limit_eval": 1},
         "training": {"max_steps": 1, "batch_size": 2, "eval_samples": 1, "eval_interval": 1},
         "rollout": {"max_turns": 1, "max_new_tokens": 4}},
        {"method": "rft", "data": {"env": "toy"}, "rft": {"group_size": 2},
         "training": {"max_steps": 1, "batch_size": 2, "eval_samples": 2, "eval_interval": 1},
         "optim": {"shared_prefix_min_tokens": 4}, "rollout": {"max_turns": 1, "max_new_tokens": 4}},
    ]
    hf_logging.warning_once.cache_clear()  # transformers says a deprecation once per process: say it again here
    collect = _Collect()
    logging.getLogger("transformers").addHandler(collect)
    try:
        for i, job in enumerate(jobs):  # LoRA (peft) and the shared-prefix KV cache, sampling and evals
            cfg = load_config({**job, "model": str(model_dir), "out_dir": str(tmp_path / f"run{i}"),
                               "lora": {"enabled": True, "r": 4}})
            # recorded rather than raised: a rollout turns a sampler's exception into data, which would hide it
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", FutureWarning)
                run_job(cfg, log=lambda s: None)
            future = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if w.category is FutureWarning]
            assert not future, future
            assert not tqdm._instances, "a progress bar was left open after the run"
    finally:
        logging.getLogger("transformers").removeHandler(collect)
    assert not [m for m in collect.messages if "deprecated" in m], collect.messages


@pytest.mark.slow
def test_export_follows_the_umask(tmp_path, model_dir):
    from agentrft.jobs.trained import export_run
    from agentrft.train.runner import run_job

    cfg = load_config({"method": "rft", "model": str(model_dir), "out_dir": str(tmp_path / "run"), "data": {"env": "toy"},
                       "lora": {"enabled": False}, "rft": {"group_size": 2},
                       "training": {"max_steps": 1, "batch_size": 2, "eval_samples": 0},
                       "rollout": {"max_turns": 1, "max_new_tokens": 4}})
    run_job(cfg, log=lambda s: None)
    old = os.umask(0o027)
    try:
        out = export_run(tmp_path / "run", tmp_path / "export")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o750  # not mkdtemp's 0700
    files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert "model.safetensors" in files and set(files.values()) == {0o640}, files
