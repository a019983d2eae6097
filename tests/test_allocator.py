"""The agentrft command runs on tcmalloc where it is installed, and its children on their usual allocator."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from agentrft import allocator


def _info(env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-m", "agentrft.cli", "info", "--json"], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.ALLOCATOR_ENV)}
    return {**env, **extra}


def test_the_command_reexecutes_on_tcmalloc_and_hides_it_from_children():
    info = _info(_clean_env())
    expected = "tcmalloc" if allocator.find_tcmalloc() else "system"
    assert info["allocator"] == expected
    assert info["tcmalloc_installed"] == (allocator.find_tcmalloc() is not None)
    assert info["ld_preload_for_children"] is None  # the caller had none: its children get none either


def test_system_setting_keeps_the_c_library_allocator():
    assert _info(_clean_env(AGENTRFT_ALLOCATOR="system"))["allocator"] == "system"


def test_callers_ld_preload_is_kept_for_the_process_and_restored_for_children(tmp_path):
    if allocator.find_tcmalloc() is None:
        pytest.skip("tcmalloc is not installed here (make installs libtcmalloc-minimal4)")
    # a real library the caller preloads: the C math library (already loaded by Python, so harmless)
    info = _info(_clean_env(LD_PRELOAD="libm.so.6"))
    assert info["allocator"] == "tcmalloc"
    assert info["ld_preload_for_children"] == "libm.so.6"


def test_preload_environ(monkeypatch):
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: "libtcmalloc_minimal.so.4")
    env = allocator.preload_environ({"PATH": "/bin"})
    assert env is not None and env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4" and env["PATH"] == "/bin"
    env = allocator.preload_environ({"LD_PRELOAD": "libx.so"})
    assert env is not None and env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4:libx.so"
    assert allocator.preload_environ({"LD_PRELOAD": "/opt/libtcmalloc.so"}) is None  # already there
    assert allocator.preload_environ({allocator.ALLOCATOR_ENV: "system"}) is None
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: None)
    assert allocator.preload_environ({}) is None  # not installed: run on glibc


def test_bad_setting_is_a_clear_error():
    with pytest.raises(SystemExit, match="AGENTRFT_ALLOCATOR='jemalloc'.*auto or system"):
        allocator.preload_environ({allocator.ALLOCATOR_ENV: "jemalloc"})


def test_ensure_preferred_execs_once_then_restores(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: "libtcmalloc_minimal.so.4")
    monkeypatch.setattr(allocator, "active", lambda: "system")
    monkeypatch.setattr(allocator.os, "execve", lambda exe, argv, env: calls.append((exe, argv, env)))
    environ = {"LD_PRELOAD": "libx.so"}
    allocator.ensure_preferred(["python", "-m", "agentrft.cli", "info"], environ)
    assert len(calls) == 1
    exe, argv, env = calls[0]
    assert exe == sys.executable and argv == ["python", "-m", "agentrft.cli", "info"]
    assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4:libx.so"
    # the re-executed process: puts the caller's LD_PRELOAD back and never execs again
    allocator.ensure_preferred(["python"], env)
    assert len(calls) == 1 and env["LD_PRELOAD"] == "libx.so" and allocator._SAVED not in env
    second = {allocator._SAVED: "", "LD_PRELOAD": "libtcmalloc_minimal.so.4"}  # the caller had no LD_PRELOAD
    allocator.ensure_preferred(["python"], second)
    assert len(calls) == 1 and second == {}
