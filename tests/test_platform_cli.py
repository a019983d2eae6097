"""``agentrft server``, ``agentrft server-key create`` and ``agentrft dashboard``: what they refuse before serving."""

from __future__ import annotations

import hashlib

from click.testing import CliRunner

from agentrft.cli import main


def test_a_non_loopback_server_without_a_key_is_refused(tmp_path):
    res = CliRunner().invoke(main, ["server", "--home", str(tmp_path / "home"), "--host", "0.0.0.0"])
    assert res.exit_code != 0 and "refusing to serve 0.0.0.0 without an API key" in res.output


def test_the_dashboard_alone_serves_loopback_only(tmp_path):
    res = CliRunner().invoke(main, ["dashboard", str(tmp_path), "--host", "10.1.2.3"])
    assert res.exit_code != 0 and "refusing to serve 10.1.2.3" in res.output


def test_a_created_key_is_printed_once_and_stored_as_its_hash(tmp_path):
    from agentrft.platform.db import PlatformDB
    from agentrft.platform.keys import KeyRing

    home = tmp_path / "home"
    res = CliRunner().invoke(main, ["server-key", "create", "--home", str(home), "--name", "alice"])
    assert res.exit_code == 0, res.output
    key = res.output.strip()
    assert key.startswith("sk-agentrft-")
    db = PlatformDB(home)
    assert db.key_hashes() == {hashlib.sha256(key.encode()).hexdigest(): "alice"}
    assert key.encode() not in (home / "platform.db").read_bytes()
    ring = KeyRing(db, environ={})
    ring.check(f"Bearer {key}")
    env_ring = KeyRing(db, environ={"AGENTRFT_API_KEYS": "sk-env-1, sk-env-2"})
    env_ring.check("Bearer sk-env-2")


def test_bad_server_options_are_clear_errors(tmp_path):
    res = CliRunner().invoke(main, ["server", "--home", str(tmp_path / "h"), "--model", "x=/does/not/exist"])
    assert res.exit_code != 0 and "--model" in res.output
    res = CliRunner().invoke(main, ["server", "--home", str(tmp_path / "h"), "--allow-egress", "ftp://x"])
    assert res.exit_code != 0 and "--allow-egress" in res.output
