"""Python grader code in the bubblewrap sandbox: what it cannot reach, the limits that bind it, the warm pool.

Each escape attempt is a grader that tries it and lets the failure raise, so a blocked attempt is a
``python_grader_runtime_error``; the host side is checked as well (the file it tried to write is not
there, the server it tried to reach accepted nothing, no process of it is left).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from agentrft.graders import PythonLimits, grade_batch, load_grader
from agentrft.graders import python_sandbox
from agentrft.graders.python_grader import UNSAFE_ENV, worker_spec
from agentrft.graders.python_pool import pool_for
from agentrft.tools.sandbox import bwrap_available
from process_probe import pids_with

pytestmark = pytest.mark.skipif(not bwrap_available(), reason="bubblewrap cannot run here")

ROOT = Path(__file__).resolve().parents[1]
LIMITS = PythonLimits(timeout_s=10, cpu_s=5, memory_mb=1024)


def _grader(source: str, limits: PythonLimits = LIMITS):
    return load_grader({"type": "python", "source": source}, python_limits=limits)


def _runtime_error(grade, *fragments: str) -> bool:
    text = " ".join(grade.error_messages)
    return (grade.reward == 0.0 and grade.errors["python_grader_runtime_error"]
            and all(f in text for f in fragments))


def _gone_within(token: str, seconds: float) -> bool:
    give_up = time.monotonic() + seconds
    while pids_with(token) and time.monotonic() < give_up:
        time.sleep(0.05)
    leftovers = pids_with(token)
    for pid in leftovers:  # never leave them to the next test
        os.kill(pid, signal.SIGKILL)
    return not leftovers


# -- a grader still grades ----------------------------------------------------------------------------------
def test_a_normal_grader_scores_with_an_allowed_package():
    src = ("import numpy as np\n"
           "def grade(sample, item):\n"
           "    print('noise')\n"
           "    return float(np.mean([len(sample['output_text']), item['n']]))\n")
    g = _grader(src).grade("abcd", {"n": 8})
    assert g.reward == 6.0 and not g.has_error, g.error_messages


@pytest.mark.parametrize("module", ["agentrft", "torch", "transformers"])
def test_packages_outside_the_list_are_not_importable(module):
    g = _grader(f"import {module}\ndef grade(s, i):\n    return 1.0\n").grade("x", {})
    assert _runtime_error(g, "ModuleNotFoundError", module), g.error_messages


# -- (a) host files are out of sight ------------------------------------------------------------------------
READS = "def grade(sample, item):\n    return len(open(item['path']).read())\n"


def test_home_checkout_and_run_folders_are_not_there(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".netrc").write_text("machine example.com password hunter2\n")
    monkeypatch.setenv("HOME", str(home))
    run_dir = tmp_path / "runs" / "grpo-20260101"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("secret: 1\n")
    grader = _grader(READS)
    for path in (home / ".netrc", ROOT / "README.md", run_dir / "config.yaml",
                 ROOT / "src" / "agentrft" / "__init__.py", Path(os.path.expanduser("~")) / ".netrc"):
        if path.exists():
            assert path.read_text(), "control: the host can read it"
        g = grader.grade("x", {"path": str(path)})
        assert _runtime_error(g, "FileNotFoundError"), (path, g.reward, g.error_messages)


def test_what_the_grader_sees_of_the_filesystem():
    src = ("import os\n"
           "def grade(sample, item):\n"
           "    assert os.getcwd() == '/work' and os.environ['HOME'] == '/work', (os.getcwd(), os.environ)\n"
           "    assert not os.path.exists('/home') and not os.path.exists('/work/main'), os.listdir('/')\n"
           "    assert os.getuid() == 65534\n"
           "    assert set(os.environ) <= {'PATH', 'HOME', 'TMPDIR', 'LANG', 'LC_ALL', 'PYTHONDONTWRITEBYTECODE',\n"
           "                               'PYTHONUNBUFFERED', 'PYTHONPATH', 'OPENBLAS_NUM_THREADS',\n"
           "                               'OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'PWD'}, sorted(os.environ)\n"
           "    return 1.0\n")
    g = _grader(src).grade("x", {})
    assert g.reward == 1.0 and not g.has_error, g.error_messages


# -- (b) writes stay in the sandbox's memory ----------------------------------------------------------------
WRITES = ("import os\n"
          "def grade(sample, item):\n"
          "    if item.get('write'):\n"
          "        with open(item['path'], 'w') as f:\n"
          "            f.write('escaped')\n"
          "    return float(os.path.exists(item['path']))\n")


def test_writes_outside_the_scratch_fail_and_nothing_reaches_the_host(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    grader = _grader(WRITES)
    for path in (target / "planted.txt", Path("/usr/planted.txt"), Path("/planted.txt"), ROOT / "planted.txt"):
        g = grader.grade("x", {"write": True, "path": str(path)})
        assert _runtime_error(g), (path, g.error_messages)
        assert not path.exists(), f"{path} appeared on the host"


def test_scratch_writes_stay_private_and_are_gone_by_the_next_grade():
    name = f"agentrft-test-{uuid.uuid4().hex}"
    grader = _grader(WRITES)
    for folder in ("/tmp", "/work", "/dev/shm"):
        path = f"{folder}/{name}"
        g = grader.grade("x", {"write": True, "path": path})
        assert g.reward == 1.0 and not g.has_error, g.error_messages  # the write worked, inside
        assert not os.path.exists(path), f"{path} appeared on the host"
        again = grader.grade("x", {"path": path})
        assert again.reward == 0.0 and not again.has_error, "a grade saw the files of the one before"


def test_disk_is_capped():
    src = ("def grade(sample, item):\n"
           "    with open('/work/big', 'wb') as f:\n"
           "        for _ in range(64):\n"
           "            f.write(b'x' * 2**20)\n"
           "    return 1.0\n")
    g = _grader(src, PythonLimits(timeout_s=10, cpu_s=5, memory_mb=1024, disk_mb=16, file_size_mb=512)).grade("x", {})
    assert _runtime_error(g, "No space left on device"), g.error_messages


# -- (c) no network -----------------------------------------------------------------------------------------
CONNECTS = ("import socket\n"
            "def grade(sample, item):\n"
            "    family = getattr(socket, item['family'])\n"
            "    address = tuple(item['address']) if family == socket.AF_INET else item['address']\n"
            "    with socket.socket(family, socket.SOCK_STREAM) as s:\n"
            "        s.settimeout(2)\n"
            "        s.connect(address)\n"
            "    return 1.0\n")


class _Server:
    """A listening socket on the host that counts the connections it accepts."""

    def __init__(self, family: int, address):
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind(address)
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
                self.accepted += 1
                conn.close()
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.mark.parametrize("kind", ["inet_loopback", "unix_path", "unix_abstract"])
def test_the_host_network_is_unreachable(kind, tmp_path):
    if kind == "inet_loopback":
        server = _Server(socket.AF_INET, ("127.0.0.1", 0))
        item = {"family": "AF_INET", "address": list(server.sock.getsockname())}
    elif kind == "unix_path":
        path = str(tmp_path / "s.sock")
        server = _Server(socket.AF_UNIX, path)
        item = {"family": "AF_UNIX", "address": path}
    else:
        name = f"\0agentrft-test-{uuid.uuid4().hex}"
        server = _Server(socket.AF_UNIX, name)
        item = {"family": "AF_UNIX", "address": name}
    try:
        with socket.socket(getattr(socket, item["family"]), socket.SOCK_STREAM) as control:
            control.connect(tuple(item["address"]) if kind == "inet_loopback" else item["address"])
        time.sleep(0.2)
        assert server.accepted == 1, "control: the host reaches the server"
        g = _grader(CONNECTS).grade("x", item)
        time.sleep(0.2)
        assert _runtime_error(g), g.error_messages
        assert server.accepted == 1, "the sandboxed grader reached the host's server"
    finally:
        server.close()


# -- (d) processes are bounded and none outlives its grade ---------------------------------------------------
def test_processes_are_bounded_by_the_pids_limit():
    # Forks sleeping children until fork fails; the count is the bound (the worker's own processes count too).
    src = ("import os, time\n"
           "def grade(sample, item):\n"
           "    n = 0\n"
           "    while n < 10000:\n"
           "        try:\n"
           "            pid = os.fork()\n"
           "        except OSError:\n"
           "            return float(n)\n"
           "        if pid == 0:\n"
           "            time.sleep(30)\n"
           "            os._exit(0)\n"
           "        n += 1\n"
           "    return float(n)\n")
    g = _grader(src, PythonLimits(timeout_s=20, cpu_s=10, memory_mb=1024, max_processes=32)).grade("x", {})
    assert not g.has_error, g.error_messages
    assert 0 < g.reward < 32


def test_a_fork_bomb_times_out_and_leaves_nothing():
    token = f"agentrft-test-{uuid.uuid4().hex}"
    src = ("import os, sys\n"
           "def grade(sample, item):\n"
           "    while True:\n"
           "        try:\n"
           "            if os.fork() == 0:\n"
           "                os.execv(sys.executable, [sys.executable, '-c', 'while True: pass', item['token']])\n"
           "        except OSError:\n"
           "            pass\n")
    start = time.monotonic()
    g = _grader(src, PythonLimits(timeout_s=3, cpu_s=10, memory_mb=1024, max_processes=16)).grade("x", {"token": token})
    assert _runtime_error(g, "timed out after 3"), g.error_messages
    assert time.monotonic() - start < 15
    assert _gone_within(token, 2.0), "processes of the fork bomb outlived the grade"


def test_a_daemon_started_by_a_grade_dies_with_the_grade():
    token = f"agentrft-test-{uuid.uuid4().hex}"
    src = ("import subprocess, sys\n"
           "def grade(sample, item):\n"
           "    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', item['token']],\n"
           "                     start_new_session=True)\n"
           "    return 1.0\n")
    start = time.monotonic()
    g = _grader(src).grade("x", {"token": token})
    assert g.reward == 1.0 and not g.has_error, g.error_messages
    assert time.monotonic() - start < 5
    assert _gone_within(token, 1.0), "the grade's setsid daemon outlived it"


# -- (e) memory is bounded ----------------------------------------------------------------------------------
def test_unbounded_allocation_is_a_memory_error():
    src = ("def grade(sample, item):\n"
           "    blocks = []\n"
           "    while True:\n"
           "        blocks.append(bytearray(16 * 2**20))\n")
    g = _grader(src, PythonLimits(timeout_s=20, cpu_s=10, memory_mb=512)).grade("x", {})
    assert _runtime_error(g, "MemoryError"), g.error_messages


def test_cpu_and_wall_limits():
    spin = _grader("def grade(s, i):\n    while True:\n        pass\n", PythonLimits(timeout_s=20, cpu_s=1))
    assert _runtime_error(spin.grade("x", {}), "SIGXCPU")
    sleeps = _grader("import time\ndef grade(s, i):\n    time.sleep(60)\n", PythonLimits(timeout_s=1.5))
    start = time.monotonic()
    assert _runtime_error(sleeps.grade("x", {}), "timed out after 1.5s")
    assert time.monotonic() - start < 8


def test_loading_is_bounded_and_its_errors_are_runtime_errors():
    stuck = _grader("while True:\n    pass\ndef grade(s, i):\n    return 1.0\n", PythonLimits(timeout_s=1.5))
    assert _runtime_error(stuck.grade("x", {}), "timed out after 1.5s while loading")
    broken = _grader("raise ValueError('at import')\ndef grade(s, i):\n    return 1.0\n")
    assert _runtime_error(broken.grade("x", {}), "grade() raised", "ValueError: at import")


# -- the warm pool ------------------------------------------------------------------------------------------
# TOKEN is drawn once, when a worker loads the source: equal tokens mean the same worker graded.
POOLED = ("import os, random\n"
          "TOKEN = random.random()\n"
          "SEEN = []\n"
          "def grade(sample, item):\n"
          "    SEEN.append(1)\n"
          "    if item.get('crash'):\n"
          "        os._exit(3)\n"
          "    if item.get('seen'):\n"
          "        return float(len(SEEN))\n"
          "    return TOKEN\n")


def _pooled(limits: PythonLimits = LIMITS):
    source = POOLED + f"# {uuid.uuid4().hex}\n"  # a pool of its own
    return _grader(source, limits), pool_for(worker_spec(source, limits))


def test_the_pool_reuses_a_warm_worker_and_each_grade_starts_fresh():
    grader, pool = _pooled()
    first, second = grader.grade("x", {}), grader.grade("x", {})
    assert not first.has_error and first.reward == second.reward
    assert pool.workers_started == 1, "the second grade started a new worker"
    assert grader.grade("x", {"seen": True}).reward == 1.0  # state a grade changes does not reach the next one
    assert grader.grade("x", {"seen": True}).reward == 1.0


def test_a_crashed_or_timed_out_worker_is_replaced():
    grader, pool = _pooled(PythonLimits(timeout_s=3, cpu_s=5, memory_mb=1024))
    token = grader.grade("x", {}).reward
    assert _runtime_error(grader.grade("x", {"crash": True}), "exited 3")
    after_crash = grader.grade("x", {}).reward
    assert after_crash != token and pool.workers_started == 2
    sleeper = "import time\n" + POOLED.replace("    if item.get('crash'):", "    if item.get('sleep'):\n"
                                                "        time.sleep(60)\n    if item.get('crash'):")
    limits = PythonLimits(timeout_s=1.5, cpu_s=5, memory_mb=1024)
    slow, slow_pool = _grader(sleeper, limits), pool_for(worker_spec(sleeper, limits))
    token = slow.grade("x", {}).reward
    assert _runtime_error(slow.grade("x", {"sleep": True}), "timed out after 1.5s")
    assert slow.grade("x", {}).reward != token and slow_pool.workers_started == 2


def test_workers_are_never_shared_between_sources():
    (a, pool_a), (b, pool_b) = _pooled(), _pooled()
    assert a.grade("x", {}).reward != b.grade("x", {}).reward
    assert pool_a is not pool_b and pool_a.workers_started == pool_b.workers_started == 1


def test_concurrent_grades_and_workers_outlive_the_threads_that_started_them():
    grader, pool = _pooled(PythonLimits(timeout_s=10, cpu_s=5, memory_mb=1024, max_workers=3))
    grades = grade_batch(grader, ["x"] * 9, [{}] * 9, max_concurrency=3)
    assert all(not g.has_error for g in grades), [g.error_messages for g in grades]
    started = pool.workers_started
    assert 1 <= started <= 3 and len({g.reward for g in grades}) == started
    time.sleep(0.3)  # the batch's threads have ended; the workers they started must still be warm
    grades = grade_batch(grader, ["x"] * 6, [{}] * 6, max_concurrency=3)
    assert all(not g.has_error for g in grades) and pool.workers_started == started


# -- where bubblewrap cannot run ----------------------------------------------------------------------------
def test_without_bubblewrap_grading_refuses_unless_opted_out(monkeypatch, tmp_path):
    monkeypatch.setattr(python_sandbox, "BWRAP", str(tmp_path / "no-bwrap"))
    monkeypatch.delenv(UNSAFE_ENV, raising=False)
    grader = _grader("def grade(sample, item):\n    return 0.75\n")
    g = grader.grade("x", {})
    assert g.reward == 0.0 and g.errors["python_grader_server_error"], g.error_messages
    assert f"{UNSAFE_ENV}=1" in g.error_messages[0] and "bubblewrap" in g.error_messages[0]
    monkeypatch.setenv(UNSAFE_ENV, "1")
    with pytest.warns(RuntimeWarning, match="WITHOUT the sandbox"):
        g = grader.grade("x", {})
    assert g.reward == 0.75 and not g.has_error, g.error_messages


def test_a_bubblewrap_that_cannot_create_namespaces_is_refused_the_same_way(monkeypatch):
    # What bwrap prints where unprivileged user namespaces are off (the folder must be reachable by uid 65534).
    folder = tempfile.mkdtemp(prefix="agentrft-test-")
    try:
        os.chmod(folder, 0o755)
        fake = Path(folder) / "bwrap"
        fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
        fake.chmod(0o755)
        monkeypatch.setattr(python_sandbox, "BWRAP", str(fake))
        monkeypatch.delenv(UNSAFE_ENV, raising=False)
        g = _grader("def grade(sample, item):\n    return 0.75\n").grade("x", {})
        assert g.reward == 0.0 and g.errors["python_grader_server_error"], g.error_messages
        assert "No permissions to create new namespace" in g.error_messages[0]
        assert f"{UNSAFE_ENV}=1" in g.error_messages[0]
    finally:
        shutil.rmtree(folder)
