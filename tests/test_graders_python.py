"""The python grader: results, every failure flagged, and the limits (network, timeout, CPU, memory).

Tests without a mode run sandboxed (the default). The ones about the unsandboxed path's own
containment and network knobs (``PythonLimits(containment=..., isolation=...)``) opt into it with
``AGENTRFT_UNSAFE_GRADERS=1``; tests/test_python_grader_sandbox.py covers what the sandbox denies.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import threading
import time
import uuid

import pytest

from agentrft.graders import PythonLimits, load_grader, network_isolation
from agentrft.graders.python_grader import (
    UNSAFE_ENV,
    namespace_available,
    pid_namespace_available,
    process_containment,
)
from process_probe import pids_with

FAST = PythonLimits(timeout_s=10, cpu_s=5, memory_mb=1024)


@pytest.fixture
def unsandboxed(monkeypatch):
    """Run python graders on the unsandboxed path, whose containment these tests are about."""
    monkeypatch.setenv(UNSAFE_ENV, "1")


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


# A child of the grader that marks the run (written then renamed, so the file is whole) and keeps running;
# it inherits the grader's stderr pipe, so it holds the output open. Its own pid is its pid in the grader's
# pid namespace, meaningless here: the host finds it by the token in its command line instead.
SPAWNS_CHILD = (
    "import os, subprocess, sys, time\n"
    "CHILD = 'import os, sys, time; p = sys.argv[1]; open(p + \".tmp\", \"w\").write(str(os.getpid())); "
    "os.rename(p + \".tmp\", p); time.sleep(30)'\n"
    "def grade(sample, item):\n"
    "    subprocess.Popen([sys.executable, '-c', CHILD, item['marker'], item['token']],\n"
    "                     start_new_session=item['setsid'])\n"
    "    while not os.path.exists(item['marker']):\n"
    "        time.sleep(0.01)\n"
    "    time.sleep(item['then_sleep'])\n"
    "    return 1.0\n"
)

CONTAINMENTS = [
    pytest.param("pid_namespace",
                 marks=pytest.mark.skipif(not pid_namespace_available(), reason="unshare --pid not permitted here")),
    "subreaper",
]


def _none_left_within(token: str, seconds: float) -> bool:
    give_up = time.monotonic() + seconds
    while pids_with(token) and time.monotonic() < give_up:
        time.sleep(0.05)
    return not pids_with(token)


def _kill_leftovers(token: str) -> None:
    for pid in pids_with(token):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _child_item(tmp_path, setsid: bool, then_sleep: float) -> dict:
    return {"marker": str(tmp_path / "child.pid"), "token": f"agentrft-test-{uuid.uuid4().hex}", "setsid": setsid,
            "then_sleep": then_sleep}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("containment", CONTAINMENTS)
@pytest.mark.parametrize("setsid", [False, True], ids=["same_group", "setsid_daemon"])
def test_grader_returns_when_it_exits_and_no_child_outlives_it(tmp_path, containment, setsid, unsandboxed):
    # grade() returns at once but leaves a child that holds stderr open -- in its process group, or a
    # daemon in a session of its own: the grade is the result, now, not a timeout; and the child dies
    # with the run. Popen.communicate would wait for the child's EOF until the timeout.
    item = _child_item(tmp_path, setsid=setsid, then_sleep=0)
    start = time.monotonic()
    g = _grade(SPAWNS_CHILD, item=item, limits=PythonLimits(timeout_s=10, cpu_s=5, containment=containment))
    elapsed = time.monotonic() - start
    try:
        assert os.path.exists(item["marker"]), "the child never started"
        assert g.reward == 1.0 and not g.has_error, g.error_messages
        assert elapsed < 5, f"the grade waited {elapsed:.1f}s for a leftover child"
        assert _none_left_within(item["token"], 2.0), "the grader's child outlived the grade"
    finally:
        _kill_leftovers(item["token"])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("containment", CONTAINMENTS)
def test_timeout_kills_a_child_that_left_the_process_group(tmp_path, containment, unsandboxed):
    # The child calls setsid(): a process-group kill cannot reach it, and it still holds stderr. The grade
    # still ends at the timeout (plus a bounded drain), and the child does not survive it.
    item = _child_item(tmp_path, setsid=True, then_sleep=60)
    start = time.monotonic()
    g = _grade(SPAWNS_CHILD, item=item, limits=PythonLimits(timeout_s=1.5, cpu_s=30, containment=containment))
    elapsed = time.monotonic() - start
    try:
        assert os.path.exists(item["marker"]), "the child never started"
        assert g.errors["python_grader_runtime_error"] and "timed out after 1.5s" in g.error_messages[0]
        assert elapsed < 6, f"the grade waited {elapsed:.1f}s for a child outside its process group"
        assert _none_left_within(item["token"], 2.0), "the grader's setsid child outlived the grade"
    finally:
        _kill_leftovers(item["token"])


# Writes item["payload"] straight to the result channel -- every descriptor it holds but stdin and stderr,
# or its parent's stdout -- then exits at once (so nothing else reports) or returns 0.5 as well.
WRITES_TO_THE_CHANNEL = (
    "import os\n"
    "def grade(sample, item):\n"
    "    payload = item['payload'].encode()\n"
    "    if item['channel'] == 'own':\n"
    "        for fd in range(3, 64):\n"
    "            try:\n"
    "                os.write(fd, payload)\n"
    "            except OSError:\n"
    "                pass\n"
    "    elif os.getppid() != item['host_pid']:\n"
    "        with open('/proc/%d/fd/1' % os.getppid(), 'wb', buffering=0) as f:\n"
    "            f.write(payload)\n"
    "    if item['then'] == 'exit':\n"
    "        os._exit(0)\n"
    "    return 0.5\n"
)
_OK = '{"status": "ok", "value": %s}'
FORGED_RESULTS = {
    "1e308": (_OK % "1e308", "own", "exit"),
    "inf": (_OK % "Infinity", "own", "exit"),
    "nan": (_OK % "NaN", "own", "exit"),
    "string": (_OK % '"1.0"', "own", "exit"),
    "bare_number": ("1e308", "own", "exit"),
    "two_results": ((_OK % "1.0") + "\n" + (_OK % "1.0") + "\n", "own", "exit"),
    "result_then_return": (_OK % "1e308", "own", "return"),
    "parent_stdout": (_OK % "1e308", "parent", "exit"),
}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("containment", ["sandbox", *CONTAINMENTS])
@pytest.mark.parametrize("name", sorted(FORGED_RESULTS))
def test_a_result_written_past_the_protocol_is_a_runtime_error(name, containment, monkeypatch):
    if containment != "sandbox":
        monkeypatch.setenv(UNSAFE_ENV, "1")
    else:
        containment = "auto"
    payload, channel, then = FORGED_RESULTS[name]
    item = {"payload": payload, "channel": channel, "then": then, "host_pid": os.getpid()}
    g = _grade(WRITES_TO_THE_CHANNEL, item=item, limits=dataclasses.replace(FAST, containment=containment))
    assert g.reward == 0.0, (name, g.reward, g.error_messages)
    assert g.errors["python_grader_runtime_error"] and not g.errors["other_error"], (name, g.errors, g.error_messages)


# Digs the run's nonce out of the runner's memory and writes its own, well-formed messages with it.
KNOWS_THE_NONCE = (
    "import __main__, json, os\n"
    "def grade(sample, item):\n"
    "    message = (json.dumps({'status': 'ok', 'value': item['value'], 'nonce': __main__.NONCE}) + '\\n').encode()\n"
    "    for fd in range(3, 64):\n"
    "        try:\n"
    "            for _ in range(item['times']):\n"
    "                os.write(fd, message)\n"
    "        except OSError:\n"
    "            pass\n"
    "    os._exit(0)\n"
)


@pytest.mark.parametrize(
    "value, times, reward",
    [(0.25, 1, 0.25), (float("nan"), 1, None), (float("inf"), 1, None), (0.25, 2, None)],
)
def test_a_forged_well_formed_result_is_validated_like_a_returned_one(value, times, reward):
    # The honest bound: grade() is the grader, so code that forges the protocol perfectly reports a value
    # it could have returned. That value is validated the same way, and it can report only once.
    g = _grade(KNOWS_THE_NONCE, item={"value": value, "times": times})
    if reward is None:
        assert g.reward == 0.0 and g.errors["python_grader_runtime_error"], g.error_messages
    else:
        assert g.reward == reward and not g.has_error, g.error_messages


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


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize(
    "isolation",
    [
        pytest.param(
            "namespace", marks=pytest.mark.skipif(not namespace_available(), reason="unshare -rn not permitted here")
        ),
        "socket_patch",
    ],
)
def test_loopback_server_sees_no_connection(isolation, unsandboxed):
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
    assert process_containment("subreaper") == "subreaper"
    assert process_containment() == ("pid_namespace" if pid_namespace_available() else "subreaper")
