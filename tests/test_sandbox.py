"""The code sandbox against real escape attempts: network, host files, fork bombs, memory, floods, daemons, links.

Every escape test asserts the real thing (a server that counts connections, a
canary file, a /proc scan for leftover processes), not just an exit code.
Resource tests are bounded twice: by the sandbox limit under test and by the
test itself (a bounded loop, a probe that the limit holds before the unbounded
variant runs), so a regression cannot take the machine down.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from agentrft.tools.base import Tool, ToolContext, ToolFailure
from agentrft.tools.sandbox import (
    PythonTool,
    Sandbox,
    SandboxConfig,
    SandboxResult,
    SandboxUnavailableError,
    ShellTool,
    UnsafePathError,
    bwrap_available,
    format_result,
)
from agentrft.types import ToolErrorKind

needs_bwrap = pytest.mark.skipif(not bwrap_available(), reason="bubblewrap unavailable (apt-get install bubblewrap)")
pytestmark = pytest.mark.timeout(60)  # every test is bounded by sandbox limits; this guards a regression


@pytest.fixture()
def sandbox():
    with Sandbox(SandboxConfig(wall_time_s=10)) as sb:
        yield sb


def processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(entry))
        except OSError:
            pass
    return found


# -- basics -----------------------------------------------------------------------------------


@needs_bwrap
def test_runs_code_as_unprivileged_user_in_scratch(sandbox):
    r = sandbox.run(["/bin/sh", "-c", "id -u; pwd; echo err >&2; exit 3"])
    assert r.exit_code == 3 and r.killed_reason is None and not r.timed_out and not r.truncated
    uid, cwd = r.stdout.split()
    assert uid == "65534" and cwd == "/work"
    assert r.stderr == "err\n"

    r = sandbox.run("import sys; print(sys.stdin.read().upper())", stdin="hello")
    assert r.ok and r.stdout == "HELLO\n"
    r = sandbox.run_python("raise ValueError('boom')")
    assert r.exit_code == 1 and "ValueError: boom" in r.stderr and "main.py" in r.stderr


@needs_bwrap
def test_files_persist_across_runs_and_cross_the_boundary(sandbox):
    sandbox.write_file("data/in.txt", "from host")
    r = sandbox.run_shell("cat data/in.txt && echo ' & back' >> data/in.txt && echo made > out.txt")
    assert r.ok and r.stdout == "from host"
    assert sandbox.read_file("data/in.txt") == b"from host & back\n"
    assert sandbox.read_file("/work/out.txt") == b"made\n"
    sandbox.write_file("helper.py", "X = 42")
    assert sandbox.run_python("import helper; print(helper.X)").stdout == "42\n"  # /work is importable


@needs_bwrap
def test_scratch_is_private_per_sandbox_and_removed_on_close():
    with Sandbox() as a, Sandbox() as b:
        assert a.scratch_dir != b.scratch_dir
        assert a.run_shell("echo secret-a > mine.txt").ok
        r = b.run_shell("ls -A /work; cat mine.txt")
        assert r.exit_code != 0 and "secret-a" not in r.stdout + r.stderr
        r = a.run_shell(f"ls {b.scratch_dir}")  # the other's host path does not exist inside
        assert r.exit_code != 0
        scratch = a.scratch_dir
    assert not os.path.exists(scratch)


@needs_bwrap
def test_unreachable_interpreter_is_refused_up_front():
    if os.geteuid() != 0:
        pytest.skip("only root makes the sandbox uid differ from ours")
    base = __import__("tempfile").mkdtemp(prefix="agentrft-test-")  # 0700 root: uid 65534 cannot enter
    try:
        with pytest.raises(SandboxUnavailableError, match="python="):
            Sandbox(SandboxConfig(python=os.path.join(base, "bin", "python3")))
    finally:
        os.rmdir(base)


@needs_bwrap
def test_given_scratch_dir_is_used_and_kept():
    import tempfile

    base = tempfile.mkdtemp(prefix="agentrft-test-")
    try:
        os.chmod(base, 0o755)
        workspace = os.path.join(base, "ws")
        os.mkdir(workspace)
        if os.geteuid() == 0:
            os.chown(workspace, 65534, 65534)
        with Sandbox(scratch_dir=workspace) as sb:
            assert sb.run_shell("echo kept > f.txt").ok
        assert open(os.path.join(workspace, "f.txt")).read() == "kept\n"
        if os.geteuid() == 0:  # a folder the sandbox uid cannot write is refused up front, with the fix
            os.chown(workspace, 0, 0)
            os.chmod(workspace, 0o755)
            with pytest.raises(SandboxUnavailableError, match="chown -R 65534"):
                Sandbox(scratch_dir=workspace)
    finally:
        subprocess.run(["rm", "-rf", base], check=True)


# -- escapes -----------------------------------------------------------------------------------


@needs_bwrap
def test_no_network_host_server_sees_zero_connections(sandbox):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.1)
    port = server.getsockname()[1]
    accepted: list[object] = []
    stop = threading.Event()

    def accept_loop():
        while not stop.is_set():
            try:
                conn, addr = server.accept()
                accepted.append(addr)
                conn.close()
            except OSError:
                pass

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        code = f"""
import socket
for host in ("127.0.0.1", "localhost"):
    try:
        socket.create_connection((host, {port}), timeout=2).close()
        print("CONNECTED", host)
    except OSError as e:
        print("connect failed", host, type(e).__name__)
try:
    print("RESOLVED", socket.getaddrinfo("example.com", 80))
except OSError as e:
    print("dns failed", type(e).__name__)
print(sorted(line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:]))
"""
        r = sandbox.run_python(code)
        time.sleep(0.2)  # let the accept loop see anything in flight
    finally:
        stop.set()
        thread.join()
        server.close()
    assert accepted == []
    assert r.ok, r.stderr
    assert "CONNECTED" not in r.stdout and "RESOLVED" not in r.stdout
    assert r.stdout.count("connect failed") == 2 and "dns failed" in r.stdout
    assert r.stdout.strip().endswith("['lo']")  # no interface but its own loopback


@needs_bwrap
def test_host_files_are_invisible(sandbox, tmp_path):
    secret = "CANARY-" + uuid.uuid4().hex
    canaries = [tmp_path / "canary.txt"]
    if os.geteuid() == 0 and os.path.isdir("/root"):
        canaries.append(Path("/root") / f"agentrft-canary-{uuid.uuid4().hex}.txt")
    try:
        for c in canaries:
            c.write_text(secret)
        for c in canaries:
            r = sandbox.run(["cat", str(c)])
            assert r.exit_code != 0 and secret not in r.stdout + r.stderr
            r = sandbox.run_python(f"print(open({str(c)!r}).read())")
            assert r.exit_code != 0 and "FileNotFoundError" in r.stderr and secret not in r.stdout + r.stderr
        repo = str(Path(__file__).resolve().parents[1])
        r = sandbox.run_shell(f"ls /root /home {repo} {tmp_path} 2>&1; true")
        assert r.stdout.count("No such file or directory") == 4, r.stdout
        r = sandbox.run_shell("ls /etc; cat /etc/shadow")
        assert r.exit_code != 0 and "shadow" not in r.stdout
    finally:
        for c in canaries:
            c.unlink(missing_ok=True)


@needs_bwrap
def test_writes_outside_work_fail(sandbox):
    for path in ("/x", "/usr/x", "/etc/x", "/dev/x", "/proc/x"):
        r = sandbox.run(["/bin/sh", "-c", f"echo hi > {path}"])
        assert r.exit_code != 0, path
    assert sandbox.run_shell("echo ok > /tmp/x && cat /tmp/x").stdout == "ok\n"  # private tmpfs
    r = sandbox.run_shell("unshare -Ur true")  # no nested user namespaces to climb out of
    assert r.exit_code != 0


def _assert_nproc_enforced(sb: Sandbox, limit: int) -> None:
    """A bounded probe (at most 200 sleeping children) that RLIMIT_NPROC holds before any fork bomb runs."""
    code = """
import os, time
ok = 0
for _ in range(200):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(2); os._exit(0)
    ok += 1
print(ok)
"""
    r = sb.run_python(code)
    assert r.ok, r.stderr
    assert int(r.stdout) < limit, "RLIMIT_NPROC is not enforced; refusing to run the fork bomb"


@needs_bwrap
def test_fork_bomb_is_contained():
    marker = "forkbomb-" + uuid.uuid4().hex
    with Sandbox(SandboxConfig(max_processes=32, wall_time_s=3, cpu_time_s=2)) as sb:
        _assert_nproc_enforced(sb, 32)
        bomb = "import os, time\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n"
        bomb += "        time.sleep(0.05)\n"
        t0 = time.monotonic()
        r = sb.run(["python3", "-c", bomb, marker])
        elapsed = time.monotonic() - t0
    assert r.timed_out and r.killed_reason == "wall_time"
    assert elapsed < 3 + 3
    assert processes_with(marker) == []
    assert subprocess.run(["true"]).returncode == 0  # the host can still fork


@needs_bwrap
def test_memory_hog_fails_and_is_reported():
    with Sandbox(SandboxConfig(memory_mb=256)) as sb:
        lazy = sb.run_python("x = bytearray(2 * 1024**3)")  # calloc: harmless even if the limit failed
        assert lazy.exit_code == 1 and lazy.killed_reason == "memory" and "MemoryError" in lazy.stderr
        touched = sb.run_python("chunks = []\nfor _ in range(200):\n    chunks.append(b'x' * (10 * 2**20))\n")
    assert touched.exit_code != 0 and touched.killed_reason == "memory"
    assert "out of memory" in format_result(touched, sb.config)


@needs_bwrap
def test_output_flood_is_truncated_quickly():
    with Sandbox(SandboxConfig(max_output_bytes=10_000, wall_time_s=10)) as sb:
        r = sb.run(["yes"])
        assert r.truncated and r.killed_reason == "output_limit" and not r.timed_out
        assert len(r.stdout) == 10_000 and set(r.stdout) == {"y", "\n"}
        assert r.wall_s < 2
        r = sb.run_python("import sys\nwhile True:\n    print('x' * 100)\n    print('e' * 100, file=sys.stderr)\n")
        assert r.truncated and len(r.stdout.encode()) + len(r.stderr.encode()) == 10_000 and r.wall_s < 2
    text = format_result(r, sb.config)
    assert text.startswith("exit_code: ") and "[output truncated at 10000 bytes]" in text


@needs_bwrap
def test_double_forked_daemon_does_not_outlive_the_run(sandbox):
    marker = "daemon-" + uuid.uuid4().hex
    code = f"""
import os, subprocess, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        devnull = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.execv(sys.executable, [sys.executable, "-c",
                 "import time; open('/work/daemon_up', 'w').close(); time.sleep(60)", "{marker}"])
    os._exit(0)
for _ in range(100):
    if os.path.exists("/work/daemon_up"):
        break
    time.sleep(0.02)
print("daemon up" if os.path.exists("/work/daemon_up") else "daemon missing")
"""
    r = sandbox.run_python(code)
    assert r.ok and r.stdout == "daemon up\n", r.stderr
    assert r.wall_s < 5
    assert processes_with(marker) == []


@needs_bwrap
def test_wall_time_kills_everything():
    marker = "sleeper-" + uuid.uuid4().hex
    with Sandbox(SandboxConfig(wall_time_s=1)) as sb:
        r = sb.run(["/bin/sh", "-c", f"sleep 30 & exec python3 -c 'import time; time.sleep(30)' {marker}"])
    assert r.timed_out and r.killed_reason == "wall_time" and r.exit_code == 137
    assert r.wall_s < 3
    assert processes_with(marker) == []
    assert "timed out" in format_result(r, sb.config)


@needs_bwrap
def test_cpu_time_limit_kills_busy_loop():
    with Sandbox(SandboxConfig(cpu_time_s=1, wall_time_s=8)) as sb:
        r = sb.run_python("while True:\n    pass\n")
    assert r.killed_reason == "cpu_time" and not r.timed_out and r.exit_code == 128 + 24
    assert r.wall_s < 5


@needs_bwrap
def test_file_size_limit():
    with Sandbox(SandboxConfig(max_file_size_mb=1)) as sb:
        r = sb.run_python("open('big', 'wb').write(b'x' * (2 * 2**20))")
        assert r.exit_code != 0 and "File too large" in r.stderr
        assert os.path.getsize(os.path.join(sb.scratch_dir, "big")) <= 2**20


# -- host-side file access -----------------------------------------------------------------------


@needs_bwrap
def test_read_file_refuses_planted_symlinks(sandbox, tmp_path):
    secret = "CANARY-" + uuid.uuid4().hex
    canary = tmp_path / "canary.txt"
    canary.write_text(secret)
    r = sandbox.run_shell("ln -s /etc/passwd passwd_link && ln -s /etc etc_dir && mkfifo pipe")
    assert r.ok, r.stderr
    os.symlink(canary, os.path.join(sandbox.scratch_dir, "canary_link"))  # as if it were planted
    for bad in ("passwd_link", "canary_link", "etc_dir/passwd", "../canary.txt", "/etc/passwd", "a/../../x"):
        with pytest.raises(UnsafePathError):
            sandbox.read_file(bad)
    with pytest.raises(UnsafePathError):
        sandbox.read_file("pipe")  # a FIFO would block forever
    with pytest.raises(UnsafePathError):
        sandbox.write_file("canary_link", "overwritten")
    with pytest.raises(UnsafePathError):
        sandbox.write_file("etc_dir/evil", "x")
    assert canary.read_text() == secret
    assert not os.path.exists("/etc/evil")


# -- availability --------------------------------------------------------------------------------


def test_missing_bwrap_raises_clear_error():
    with pytest.raises(SandboxUnavailableError, match="apt-get install -y bubblewrap"):
        Sandbox(SandboxConfig(bwrap="/nonexistent/bwrap"))


def test_unsafe_fallback_warns_and_still_limits():
    cfg = SandboxConfig(bwrap="/nonexistent/bwrap", allow_unsafe_fallback=True, wall_time_s=1)
    with pytest.warns(RuntimeWarning, match="WITHOUT ISOLATION"):
        sb = Sandbox(cfg)
    with sb:
        assert not sb.isolated
        r = sb.run_python("import os; print(os.getcwd())")
        assert r.ok and os.path.realpath(r.stdout.strip()) == os.path.realpath(sb.scratch_dir)
        r = sb.run(["sleep", "30"])
        assert r.timed_out and r.wall_s < 3


def test_unsafe_fallback_run_ends_with_its_program_and_kills_what_it_left():
    # Without a pid namespace the run is a process group: when the program exits, a background job that
    # still holds the output pipes is killed and the run returns, as it does inside bwrap.
    marker = "agentrft-bg-" + uuid.uuid4().hex
    cfg = SandboxConfig(bwrap="/nonexistent/bwrap", allow_unsafe_fallback=True, wall_time_s=10)
    with pytest.warns(RuntimeWarning, match="WITHOUT ISOLATION"):
        sb = Sandbox(cfg)
    with sb:
        r = sb.run_shell(f"python3 -c 'import time; time.sleep(30)' {marker} & echo started")
    assert r.ok and r.stdout == "started\n" and not r.timed_out and r.wall_s < 5
    give_up = time.monotonic() + 2
    while processes_with(marker) and time.monotonic() < give_up:
        time.sleep(0.05)
    assert processes_with(marker) == []


# -- tools ---------------------------------------------------------------------------------------


CTX = ToolContext(trace_id="t", call_id="c", turn=0)


@needs_bwrap
def test_tools_follow_the_protocol_and_format_results(sandbox):
    py, sh = PythonTool(sandbox), ShellTool(sandbox)
    for tool, arg in ((py, "code"), (sh, "command")):
        assert isinstance(tool, Tool) and tool.has_implementation
        fn = tool.schema()["function"]
        assert fn["name"] == tool.name and fn["parameters"]["required"] == [arg]
    assert (py.name, sh.name) == ("run_python", "run_shell")

    text = asyncio.run(py.acall({"code": "print(6 * 7)"}, CTX))
    assert text == "exit_code: 0\nstdout:\n42\nstderr:\n"
    text = asyncio.run(sh.acall({"command": "echo out; echo err >&2; exit 2"}, CTX))
    assert text == "exit_code: 2\nstdout:\nout\nstderr:\nerr"
    with pytest.raises(ToolFailure) as info:
        asyncio.run(py.acall({"code": 3}, CTX))
    assert info.value.kind == ToolErrorKind.INVALID_ARGUMENTS


@needs_bwrap
def test_tool_timeout_is_text_for_the_model():
    with Sandbox(SandboxConfig(wall_time_s=0.5)) as sb:
        text = asyncio.run(ShellTool(sb).acall({"command": "sleep 5"}, CTX))
    assert text.startswith("exit_code: 137\nkilled: wall-clock limit of 0.5 s exceeded (timed out)\n")


@needs_bwrap
def test_concurrent_runs_share_one_sandbox(sandbox):
    async def both():
        tool = PythonTool(sandbox)
        return await asyncio.gather(*(tool.acall({"code": f"print({i})"}, CTX) for i in range(4)))

    outs = asyncio.run(both())
    assert [o.split("stdout:\n")[1].split("\n")[0] for o in outs] == ["0", "1", "2", "3"]


def test_result_formatting_without_a_sandbox():
    r = SandboxResult(exit_code=152, stdout="", stderr="", killed_reason="cpu_time")
    assert format_result(r, SandboxConfig(cpu_time_s=2)).splitlines()[1] == "killed: CPU time limit of 2 s exceeded"


@needs_bwrap
def test_tools_run_through_the_executor(sandbox):
    from agentrft.tools.executor import ToolExecutor
    from agentrft.types import ToolCall

    executor = ToolExecutor([PythonTool(sandbox), ShellTool(sandbox)])
    records = executor.execute(
        [ToolCall("run_python", {"code": "open('a.txt', 'w').write('hi')"}), ToolCall("run_shell", {"cmd": "ls"})],
        turn=0,
    )
    assert records[0].ok and records[0].result.startswith("exit_code: 0")
    assert records[1].error is not None and records[1].error.kind == ToolErrorKind.INVALID_ARGUMENTS
    assert sandbox.read_file("a.txt") == b"hi"


def test_config_rejects_nonsense():
    from agentrft.errors import ConfigError

    with pytest.raises(ConfigError, match="memory_mb"):
        SandboxConfig(memory_mb=0)
