"""The python grader: results, every failure flagged, and the sandbox (network, timeout, CPU, memory)."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from agentrft.graders import PythonLimits, load_grader, network_isolation
from agentrft.graders.python_grader import namespace_available

FAST = PythonLimits(timeout_s=10, cpu_s=5, memory_mb=1024)


def _grade(source: str, sample="out", item=None, limits=FAST):
    return load_grader({"type": "python", "source": source}, python_limits=limits).grade(sample, item or {})


def test_grade_reads_sample_and_item_and_prints_do_not_interfere():
    src = "def grade(sample, item):\n    print('noise')\n    return len(sample['output_text']) / item['n']\n"
    g = _grade(src, "abcd", {"n": 8})
    assert g.reward == 0.5 and not g.has_error
    src = "def grade(sample, item):\n    return sample['trajectory']['tool_calls'] + True\n"
    assert _grade(src, {"output_text": "", "trajectory": {"tool_calls": 2}}).reward == 3.0


@pytest.mark.parametrize(
    "body, fragment",
    [
        ("raise ValueError('boom')", "ValueError: boom"),
        ("return None", "must return a number, got NoneType"),
        ("return 'high'", "got str"),
        ("return float('nan')", "not finite"),
        ("return float('inf')", "not finite"),
        ("import os; os._exit(3)", "exited 3"),
        ("import sys; sys.exit(0)", "SystemExit"),
        ("return 10 ** 400", "OverflowError"),
    ],
)
def test_failures_score_zero_with_runtime_flag(body, fragment):
    g = _grade(f"def grade(sample, item):\n    {body}\n")
    assert g.reward == 0.0
    assert g.errors["python_grader_runtime_error"] and not g.errors["other_error"], g.errors
    assert fragment in " ".join(g.error_messages)


def test_process_that_cannot_start_is_a_server_error(monkeypatch):
    import agentrft.graders.python_grader as pg

    def broken(*a, **k):
        raise OSError("no such interpreter")

    monkeypatch.setattr(pg.subprocess, "Popen", broken)
    g = _grade("def grade(s, i):\n    return 1\n")
    assert g.reward == 0.0 and g.errors["python_grader_server_error"] and "no such interpreter" in g.error_messages[0]


def test_environment_is_not_inherited(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "secret")
    src = "import os\ndef grade(s, i):\n    return 0.0 if os.environ.get('OPENAI_API_KEY') else 1.0\n"
    assert _grade(src).reward == 1.0


def test_wall_clock_timeout_kills_the_process_group():
    # the grader sleeps (no CPU) and leaves a grandchild; both must die at the timeout
    src = (
        "import subprocess, sys, time\n"
        "def grade(s, i):\n"
        "    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "    time.sleep(60)\n"
    )
    start = time.monotonic()
    g = _grade(src, limits=PythonLimits(timeout_s=1.5, cpu_s=30))
    assert time.monotonic() - start < 8
    assert g.errors["python_grader_runtime_error"] and "timed out after 1.5s" in g.error_messages[0]


# A child of the grader that reports its pid (written then renamed, so the file is whole) and keeps
# running; it inherits the grader's stderr pipe, so it holds the output open.
SPAWNS_CHILD = (
    "import os, subprocess, sys, time\n"
    "CHILD = 'import os, sys, time; p = sys.argv[1]; open(p + \".tmp\", \"w\").write(str(os.getpid())); "
    "os.rename(p + \".tmp\", p); time.sleep(30)'\n"
    "def grade(sample, item):\n"
    "    subprocess.Popen([sys.executable, '-c', CHILD, item['marker']], start_new_session=item['setsid'])\n"
    "    while not os.path.exists(item['marker']):\n"
    "        time.sleep(0.01)\n"
    "    time.sleep(item['then_sleep'])\n"
    "    return 1.0\n"
)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _gone_within(pid: int, seconds: float) -> bool:
    give_up = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < give_up:
        time.sleep(0.05)
    return not _alive(pid)


def test_grader_returns_when_it_exits_and_its_leftover_child_is_killed(tmp_path):
    # grade() returns at once but leaves a child that holds stderr open: the grade is the result, now,
    # not a timeout; and the child dies with the run. Popen.communicate would wait for the child's EOF
    # until the timeout and then report a timeout instead of the score.
    marker = tmp_path / "child.pid"
    start = time.monotonic()
    item = {"marker": str(marker), "setsid": False, "then_sleep": 0}
    g = _grade(SPAWNS_CHILD, item=item, limits=PythonLimits(timeout_s=10, cpu_s=5))
    elapsed = time.monotonic() - start
    pid = int(marker.read_text())
    try:
        assert g.reward == 1.0 and not g.has_error, g.error_messages
        assert elapsed < 5, f"the grade waited {elapsed:.1f}s for a leftover child"
        assert _gone_within(pid, 2.0), "the grader's child outlived the grade"
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_timeout_does_not_wait_for_a_child_that_left_the_process_group(tmp_path):
    # The child calls setsid(): killing the process group cannot reach it, and it still holds stderr.
    # The grade must still end at the timeout (plus a bounded drain), never wait for the child to exit.
    marker = tmp_path / "child.pid"
    start = time.monotonic()
    item = {"marker": str(marker), "setsid": True, "then_sleep": 60}
    g = _grade(SPAWNS_CHILD, item=item, limits=PythonLimits(timeout_s=1.5, cpu_s=30))
    elapsed = time.monotonic() - start
    pid = int(marker.read_text())
    try:
        assert g.errors["python_grader_runtime_error"] and "timed out after 1.5s" in g.error_messages[0]
        assert elapsed < 6, f"the grade waited {elapsed:.1f}s for a child outside its process group"
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_output_flood_is_cut_at_the_cap():
    src = "import sys\ndef grade(s, i):\n    while True:\n        sys.stderr.write('x' * 65536)\n"
    start = time.monotonic()
    g = _grade(src, limits=PythonLimits(timeout_s=20, cpu_s=10, max_output_bytes=1_000_000))
    assert time.monotonic() - start < 10
    assert g.errors["python_grader_runtime_error"] and "more than 1000000 bytes" in g.error_messages[0]


def test_cpu_limit():
    g = _grade("def grade(s, i):\n    while True:\n        pass\n", limits=PythonLimits(timeout_s=20, cpu_s=1))
    assert g.errors["python_grader_runtime_error"] and "SIGXCPU" in g.error_messages[0]


def test_memory_limit():
    src = "def grade(s, i):\n    block = bytearray(2 * 1024 ** 3)\n    return 1.0\n"
    g = _grade(src, limits=PythonLimits(timeout_s=20, cpu_s=10, memory_mb=512))
    assert g.reward == 0.0 and g.errors["python_grader_runtime_error"] and "MemoryError" in g.error_messages[0]


NETWORK_PROBE = (
    "import socket\n"
    "def grade(sample, item):\n"
    "    try:\n"
    "        socket.create_connection(('127.0.0.1', item['port']), timeout=2).close()\n"
    "        return 1.0\n"
    "    except OSError:\n"
    "        return 0.0\n"
)


@pytest.mark.parametrize(
    "isolation",
    [
        pytest.param(
            "namespace", marks=pytest.mark.skipif(not namespace_available(), reason="unshare -rn not permitted here")
        ),
        "socket_patch",
    ],
)
def test_loopback_server_sees_no_connection(isolation):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted: list = []

    def accept_loop(stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                accepted.append(conn)
            except OSError:
                pass

    stop = threading.Event()
    thread = threading.Thread(target=accept_loop, args=(stop,), daemon=True)
    thread.start()
    try:
        # control: the server is reachable from an unsandboxed client
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        time.sleep(0.3)
        assert len(accepted) == 1
        limits = PythonLimits(timeout_s=10, cpu_s=5, isolation=isolation)
        g = _grade(NETWORK_PROBE, item={"port": port}, limits=limits)
        time.sleep(0.3)
        assert g.reward == 0.0 and not g.has_error
        assert len(accepted) == 1, "the sandboxed grader reached the loopback server"
    finally:
        stop.set()
        thread.join()
        for c in accepted:
            c.close()
        server.close()


def test_reported_isolation():
    assert network_isolation("socket_patch") == "socket_patch"
    assert network_isolation() == ("namespace" if namespace_available() else "socket_patch")
