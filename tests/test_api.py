"""The public API (``agentrft.__all__``) and the session docs/api.md shows, run as written on a tiny model."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import agentrft

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_every_public_name_imports():
    assert agentrft.__all__ == sorted(set(agentrft.__all__))
    for name in agentrft.__all__:
        assert getattr(agentrft, name) is not None, name
    with pytest.raises(AttributeError):
        agentrft.not_a_public_name  # noqa: B018


def test_importing_agentrft_is_cheap():
    code = "import agentrft, sys; print(sorted(m for m in ('torch', 'transformers', 'fastapi') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.DOTALL)


def test_the_docs_have_the_blocks_this_test_runs():
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) == 2 and 'MODEL = "smollm2-135m"' in blocks[0]
    names = set(re.findall(r"agentrft\.(\w+)", blocks[0]))
    assert names <= set(agentrft.__all__), f"docs/api.md uses private names: {names - set(agentrft.__all__)}"


@pytest.mark.slow
def test_the_api_session_runs_as_written(tmp_path):
    from agentrft.models.loading import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "model")
    session, own_env = python_blocks(DOC.read_text())
    session = session.replace('MODEL = "smollm2-135m"', f"MODEL = {str(model_dir)!r}")
    proc = subprocess.run([sys.executable, "-c", session], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"reward \d\.\d{3}, \d\.\d{2} tool calls per rollout", proc.stdout)
    assert "mentions revenue: [" in proc.stdout
    assert (tmp_path / "runs" / "api-session" / "run.db").is_file()
    assert re.search(r"^(stop|length) ", proc.stdout, re.MULTILINE)  # the served reply's finish reason

    proc = subprocess.run([sys.executable, "-c", own_env], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "['order_status']"
