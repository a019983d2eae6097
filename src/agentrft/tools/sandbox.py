"""Sandboxed execution of model-written code, and the ``run_python`` / ``run_shell`` tools.

What: a :class:`Sandbox` owns one private scratch folder (one per rollout) and
runs commands or Python source in it under `bubblewrap`_ (``bwrap``), returning
a :class:`SandboxResult` (exit code, capped stdout/stderr, why it was killed,
wall time). :class:`PythonTool` and :class:`ShellTool` expose it to the model
through the :class:`~agentrft.tools.base.Tool` protocol.

Why bubblewrap: the code is written by a policy under optimisation pressure, so
it must be treated as hostile (reward hacking reads grader files, fork bombs,
network calls). bwrap gives namespace isolation without a daemon, root or
container images, starts in a few milliseconds, and is packaged everywhere
(``apt-get install bubblewrap``). Each run gets:

* new user, pid, net, ipc, uts and cgroup namespaces (``--unshare-all``): the
  net namespace has only its own ``lo``, so the host network (including host
  ``127.0.0.1``) and DNS are unreachable; further user namespaces are disabled;
* a root that is an empty, read-only tmpfs with only ``/usr`` (and the
  merged-usr ``/bin``, ``/lib*`` links), a synthetic minimal ``/etc``, a fresh
  ``/proc`` and ``/dev``, size-capped tmpfs ``/tmp`` and ``/dev/shm``, and the
  scratch folder read-write at ``/work`` (the cwd). ``/root``, ``/home``, the
  repository and every other host path simply do not exist inside;
* an unprivileged identity: uid/gid 65534 inside; when agentrft runs as root
  the bwrap process itself is started as uid 65534 so that the kernel really
  enforces ``RLIMIT_NPROC`` (it never does for real uid 0);
* resource limits applied by ``prlimit`` as the first program inside the
  sandbox: CPU seconds, address space, processes, file size, open files, no
  core dumps. Because the limits are set *inside* the new user namespace,
  ``RLIMIT_NPROC`` counts only this sandbox's processes (the kernel keeps
  per-user-namespace counts), so concurrent sandboxes do not share one pool;
* a wall-clock limit and an output cap enforced here, by reading the pipes as
  they stream and SIGKILLing the sandbox's pid-namespace init (a ``/bin/sh``
  that runs the program as pid 2, held by a pidfd) when either is hit, and
  always after the program exits. The kernel then kills every process in the
  namespace, double-forked daemons included, and :meth:`Sandbox.run` waits for
  that before it returns: no process outlives a run.

Departures from a container runtime: no seccomp filter, no cgroup (memory is
bounded per process by ``RLIMIT_AS``, not in total; disk use of the scratch
folder is bounded per file only). See ``docs/sandbox.md`` for the threat model.

Without bwrap (or when its self-check fails) :class:`Sandbox` raises
:class:`SandboxUnavailableError`, unless ``allow_unsafe_fallback=True``: then
it runs plain subprocesses with the same rlimits in the scratch folder, with
**no** filesystem or network isolation, and warns loudly.

Host-side file access (:meth:`Sandbox.read_file`, :meth:`Sandbox.write_file`)
walks the path one component at a time with ``O_NOFOLLOW`` from a descriptor
of the scratch folder, so links the sandboxed code planted cannot make the
trainer read or overwrite files outside it.

.. _bubblewrap: https://github.com/containers/bubblewrap
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import selectors
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
import uuid
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Sequence

from agentrft.errors import AgentRFTError, ConfigError
from agentrft.tools.base import ToolContext, ToolFailure
from agentrft.types import ToolErrorKind

__all__ = [
    "PythonTool",
    "Sandbox",
    "SandboxConfig",
    "SandboxError",
    "SandboxResult",
    "SandboxUnavailableError",
    "ShellTool",
    "UnsafePathError",
    "bwrap_available",
    "format_result",
]

SANDBOX_UID = 65534  # "nobody": owns nothing on the host
SANDBOX_HOME = "/work"  # where the scratch folder appears inside the sandbox
_CODE_DIR = "/sandbox"  # read-only folder inside holding the Python source of a run
_SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
_INSTALL_HINT = (
    "Install bubblewrap (Debian/Ubuntu: `apt-get install -y bubblewrap`; Fedora: `dnf install bubblewrap`) "
    "and make sure unprivileged user namespaces are enabled (sysctl kernel.unprivileged_userns_clone=1 "
    "or user.max_user_namespaces > 0; Ubuntu 24.04+: an AppArmor profile for bwrap). "
    "Set SandboxConfig(allow_unsafe_fallback=True) only if you accept running model-written code "
    "without isolation."
)
_KILL_GRACE_S = 5.0  # how long to wait for a SIGKILLed sandbox to be gone
# pid 1 of the sandbox: a shell that runs the program as pid 2 (so it has normal signal semantics:
# a namespace init ignores SIGXCPU/SIGTERM), reaps orphans, and exits with its status (128+N on signal N).
_INIT_ARGV = ["/bin/sh", "-c", '"$@"; exit $?', "sandbox-init"]


class SandboxError(AgentRFTError):
    """The sandbox was misused or is in a bad state (closed, missing scratch folder)."""


class SandboxUnavailableError(SandboxError):
    """bubblewrap is missing or cannot create namespaces here; the message says how to fix it."""


class UnsafePathError(SandboxError, PermissionError):
    """A scratch-relative path escapes the scratch folder or goes through a symlink."""


@dataclass(frozen=True)
class SandboxConfig:
    """Limits and layout of one sandboxed run. Every limit applies per :meth:`Sandbox.run` call."""

    cpu_time_s: int = 5
    """CPU seconds per process (RLIMIT_CPU); a busy loop is killed by SIGXCPU."""
    wall_time_s: float = 10.0
    """Wall-clock seconds per run; then the whole sandbox is SIGKILLed."""
    memory_mb: int = 512
    """Address space per process in MiB (RLIMIT_AS); allocations beyond fail (MemoryError)."""
    max_processes: int = 64
    """Processes and threads alive at once inside the sandbox, its init included (RLIMIT_NPROC)."""
    max_file_size_mb: int = 16
    """Largest file a process may write (RLIMIT_FSIZE)."""
    max_open_files: int = 256
    """Open file descriptors per process (RLIMIT_NOFILE)."""
    max_output_bytes: int = 64_000
    """stdout + stderr kept per run; more kills the run and sets ``truncated``."""
    tmp_size_mb: int = 64
    """Size of the in-memory ``/tmp`` and ``/dev/shm`` inside the sandbox (each)."""
    python: str = "/usr/bin/python3"
    """Interpreter for Python source. Outside ``/usr`` its prefix (and venv) are bound read-only."""
    extra_ro_binds: tuple[tuple[str, str], ...] = ()
    """Extra ``(host_path, sandbox_path)`` pairs bound read-only (data sets, toolchains)."""
    allow_unsafe_fallback: bool = False
    """Without bwrap, run plain subprocesses with rlimits only (no isolation!) instead of failing."""
    bwrap: str = "bwrap"
    """bubblewrap executable (a name looked up on PATH, or a path)."""

    def __post_init__(self) -> None:
        for name in ("cpu_time_s", "wall_time_s", "memory_mb", "max_processes", "max_file_size_mb",
                     "max_open_files", "max_output_bytes", "tmp_size_mb"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"SandboxConfig.{name} must be positive, got {getattr(self, name)!r}")


@dataclass
class SandboxResult:
    """What one run produced. ``exit_code`` is 128+N when the program died of signal N."""

    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool = False
    killed_reason: str | None = None  # wall_time | cpu_time | memory | output_limit | file_size | signal:NAME
    truncated: bool = False
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.killed_reason is None


# -- environment discovery ---------------------------------------------------------------------


def _which(name: str) -> str | None:
    return name if os.path.isabs(name) and os.access(name, os.X_OK) else shutil.which(name)


def bwrap_available(bwrap: str = "bwrap") -> bool:
    """True when the bwrap executable exists and passes the namespace self-check."""
    try:
        _bwrap_self_check(bwrap)
    except SandboxUnavailableError:
        return False
    return True


_self_check_lock = threading.Lock()
_self_check_cache: dict[str, str | None] = {}  # resolved bwrap path -> error text (None = works)


def _bwrap_self_check(bwrap: str) -> str:
    """Resolve bwrap and run ``true`` in a full sandbox once per process; raise if that fails."""
    path = _which(bwrap)
    if path is None:
        raise SandboxUnavailableError(f"bubblewrap executable {bwrap!r} not found. {_INSTALL_HINT}")
    with _self_check_lock:
        if path not in _self_check_cache:
            _self_check_cache[path] = _probe(path)
    error = _self_check_cache[path]
    if error is not None:
        raise SandboxUnavailableError(f"bubblewrap at {path} failed its self-check: {error}. {_INSTALL_HINT}")
    return path


def _probe(bwrap_path: str) -> str | None:
    if _which("prlimit") is None:
        return "`prlimit` (util-linux) is needed to apply resource limits and was not found"
    state = tempfile.mkdtemp(prefix="agentrft-sbx-check-")
    try:
        _own(state)
        argv = _bwrap_argv(bwrap_path, SandboxConfig(), scratch=state)
        argv += _prlimit_argv(SandboxConfig()) + ["/bin/sh", "-c", "echo ok > /work/probe"]
        proc = subprocess.run(argv, capture_output=True, timeout=30, env=_sandbox_env(), **_drop_privileges())
        if proc.returncode != 0:
            return f"exit code {proc.returncode}: {proc.stderr.decode(errors='replace').strip()[:500]}"
        if not os.path.exists(os.path.join(state, "probe")):
            return "the scratch folder was not writable inside the sandbox"
        return None
    except (OSError, subprocess.SubprocessError) as e:
        return f"{type(e).__name__}: {e}"
    finally:
        _rmtree(state)


# -- command lines -----------------------------------------------------------------------------


def _drop_privileges() -> dict[str, Any]:
    """Popen arguments that make bwrap (and so the sandbox) run as an unprivileged uid when we are root."""
    if os.geteuid() != 0:
        return {}
    return {"user": SANDBOX_UID, "group": SANDBOX_UID, "extra_groups": []}


def _own(path: str, dir_fd: int | None = None) -> None:
    """Give what we create in scratch to the sandbox uid (only matters when we are root: code runs as 65534)."""
    if os.geteuid() == 0:
        os.chown(path, SANDBOX_UID, SANDBOX_UID, dir_fd=dir_fd, follow_symlinks=False)


def _resolve_python(python: str) -> str:
    """Absolute path of the configured interpreter (a bare name is looked up on the sandbox PATH)."""
    return python if os.path.isabs(python) else (shutil.which(python, path=_SYSTEM_PATH) or python)


def _sandbox_env(home: str = SANDBOX_HOME) -> dict[str, str]:
    """The whole environment of sandboxed code (nothing of ours leaks in: no tokens, no proxies)."""
    return {
        "PATH": _SYSTEM_PATH,
        "HOME": home,
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": home,  # the model's own modules in /work import like in a project
    }


_SYSTEM_DIRS = ("/usr",)
_MERGED_USR_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "alternatives")


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _python_binds(python: str) -> list[str]:
    """Read-only binds so ``python`` works inside: its venv folder and base prefix, unless under /usr."""
    python = _resolve_python(python)
    if not os.path.isabs(python):
        return []
    prefixes: list[str] = []
    for p in (python, os.path.realpath(python)):
        prefix = os.path.dirname(os.path.dirname(p))
        if not any(_is_under(p, d) for d in _SYSTEM_DIRS) and prefix not in prefixes:
            prefixes.append(prefix)
    return [arg for prefix in prefixes for arg in ("--ro-bind", prefix, prefix)]


def _bwrap_argv(bwrap_path: str, config: SandboxConfig, scratch: str, extra_binds: Sequence[str] = ()) -> list[str]:
    """The bwrap command line up to (not including) the program; ``extra_binds`` are more mount options."""
    tmp_bytes = str(config.tmp_size_mb * 1024 * 1024)
    argv = [
        bwrap_path,
        "--unshare-all", "--unshare-user", "--disable-userns",
        "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
        "--hostname", "sandbox",
        "--die-with-parent", "--new-session",
        # No bwrap init: it reports the exit through an eventfd and is left orphaned to the host's
        # pid 1 (zombies pile up where that is a python trainer). Our pid 1 is _INIT_ARGV instead.
        "--as-pid-1",
        "--cap-drop", "ALL",
    ]
    for d in _SYSTEM_DIRS:
        argv += ["--ro-bind", d, d]
    for link in _MERGED_USR_LINKS:
        if os.path.islink(link):
            argv += ["--symlink", os.readlink(link), link]
        elif os.path.isdir(link):
            argv += ["--ro-bind", link, link]
    for name in _ETC_FILES:
        argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    argv += _python_binds(config.python)
    for host, inside in config.extra_ro_binds:
        argv += ["--ro-bind", host, inside]
    argv += [
        "--proc", "/proc",
        "--dev", "/dev",
        "--size", tmp_bytes, "--tmpfs", "/dev/shm",
        "--size", tmp_bytes, "--tmpfs", "/tmp",
        "--bind", scratch, SANDBOX_HOME,
        *extra_binds,
        # Last: everything but /work, /tmp and /dev/shm becomes read-only (the root tmpfs and /dev included).
        "--remount-ro", "/dev",
        "--remount-ro", "/",
        "--chdir", SANDBOX_HOME,
    ]
    return argv


def _prlimit_argv(config: SandboxConfig) -> list[str]:
    mib = 1024 * 1024
    return [
        "/usr/bin/prlimit" if os.path.exists("/usr/bin/prlimit") else "prlimit",
        f"--cpu={int(config.cpu_time_s)}:{int(config.cpu_time_s) + 1}",  # soft: SIGXCPU, hard: SIGKILL
        f"--as={config.memory_mb * mib}",
        f"--nproc={config.max_processes}",
        f"--fsize={config.max_file_size_mb * mib}",
        f"--nofile={config.max_open_files}",
        "--core=0",
        "--",
    ]


def _etc_passwd_files() -> dict[str, str]:
    return {
        "passwd": (
            f"root:x:0:0:root:/root:/bin/sh\n"
            f"sandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:sandbox:{SANDBOX_HOME}:/bin/sh\n"
        ),
        "group": f"root:x:0:\nsandbox:x:{SANDBOX_UID}:\n",
        "hosts": "127.0.0.1 localhost sandbox\n::1 localhost\n",
    }


# -- the sandbox -------------------------------------------------------------------------------


class Sandbox:
    """A private scratch folder plus isolated, resource-limited execution in it.

    Create one per rollout and :meth:`close` it (or use ``with``) when the
    rollout ends; the scratch folder is removed unless it was passed in.
    ``run`` may be called from several threads at once.
    """

    def __init__(self, config: SandboxConfig | None = None, scratch_dir: str | os.PathLike[str] | None = None):
        self.config = config or SandboxConfig()
        self.isolated = True
        try:
            self._bwrap = _bwrap_self_check(self.config.bwrap)
        except SandboxUnavailableError as e:
            if not self.config.allow_unsafe_fallback:
                raise
            self._bwrap = None
            self.isolated = False
            warnings.warn(
                f"agentrft sandbox: RUNNING MODEL-WRITTEN CODE WITHOUT ISOLATION (allow_unsafe_fallback=True). "
                f"It can read your files and reach the network; only rlimits and the scratch cwd apply. "
                f"Reason: {e}",
                RuntimeWarning,
                stacklevel=2,
            )
        # state: files of this sandbox outside the scratch folder (code to run, /etc files), ours;
        # 0711 so the sandbox uid can reach the scratch folder inside it but list nothing.
        self._state = tempfile.mkdtemp(prefix="agentrft-sbx-")
        os.chmod(self._state, 0o711)
        owned: list[str] = [self._state]
        if scratch_dir is None:
            scratch = os.path.join(self._state, "work")
            os.mkdir(scratch, 0o700)  # private to the sandbox uid (and root)
            _own(scratch)
        else:
            scratch = os.path.realpath(scratch_dir)
            os.makedirs(scratch, exist_ok=True)
        self.scratch_dir = scratch
        self._etc_args: list[str] = []
        for name, text in _etc_passwd_files().items():
            path = os.path.join(self._state, f"etc-{name}")
            with open(path, "w") as f:
                f.write(text)
            os.chmod(path, 0o644)
            self._etc_args += ["--ro-bind", path, f"/etc/{name}"]
        self._closed = False
        self._finalizer = weakref.finalize(self, _rmtree_all, owned)
        custom_binds = _python_binds(self.config.python) or self.config.extra_ro_binds
        if self._bwrap is not None and (scratch_dir is not None or custom_binds):
            # The process-wide self-check used the default layout; a user-chosen folder, interpreter or
            # bind may not be reachable by the sandbox uid: find out now, clearly, not in the model's output.
            script = f"test -w {SANDBOX_HOME} || echo {SANDBOX_HOME} is not writable >&2"
            if _python_binds(self.config.python):
                script += '; "$1" -c "" 2>/dev/null || echo "$1" does not run >&2'
            probe = self.run(["/bin/sh", "-c", script + "; exit 0", "probe", _resolve_python(self.config.python)])
            if probe.exit_code != 0 or probe.stderr:
                self.close()
                raise SandboxUnavailableError(
                    f"cannot set up the sandbox with scratch_dir={scratch!r}, python={self.config.python!r}, "
                    f"extra_ro_binds={self.config.extra_ro_binds!r}: {probe.stderr.strip()[:300]}. "
                    f"When running as root, code runs as uid {SANDBOX_UID}: every parent folder of these must be "
                    f"searchable by it and the scratch folder writable (chown -R {SANDBOX_UID}:{SANDBOX_UID} it)."
                )

    # -- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        """Remove the scratch folder (if this sandbox created it) and private state."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- running -------------------------------------------------------------------------------
    def run(self, command: Sequence[str] | str, stdin: str | bytes | None = None) -> SandboxResult:
        """Run ``command`` (an argv list, or Python source when a ``str``) in the sandbox, cwd = scratch."""
        if isinstance(command, str):
            return self.run_python(command, stdin)
        if not command:
            raise ValueError("empty argv")
        return self._run(list(command), stdin, code=None)

    def run_python(self, code: str, stdin: str | bytes | None = None) -> SandboxResult:
        """Run Python source (as the file ``/sandbox/main.py``, so tracebacks show lines)."""
        return self._run(None, stdin, code=code)

    def run_shell(self, command: str, stdin: str | bytes | None = None) -> SandboxResult:
        """Run a shell command line with ``bash -c`` (``sh`` if bash is absent)."""
        shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
        return self._run([shell, "-c", command], stdin, code=None)

    def _run(self, argv: list[str] | None, stdin: str | bytes | None, code: str | None) -> SandboxResult:
        if self._closed:
            raise SandboxError("the sandbox is closed")
        if not os.path.isdir(self.scratch_dir):
            raise SandboxError(f"scratch folder {self.scratch_dir} is gone")
        code_file = None
        if code is not None:
            code_file = os.path.join(self._state, f"main-{uuid.uuid4().hex}.py")
            with open(code_file, "w", encoding="utf-8") as f:
                f.write(code)
            os.chmod(code_file, 0o644)
        try:
            if self._bwrap is not None:
                binds = list(self._etc_args)
                if code_file is not None:
                    argv = [_resolve_python(self.config.python), f"{_CODE_DIR}/main.py"]
                    binds += ["--ro-bind", code_file, f"{_CODE_DIR}/main.py"]
                full = _bwrap_argv(self._bwrap, self.config, self.scratch_dir, binds)
                full += _prlimit_argv(self.config) + _INIT_ARGV + list(argv or [])
                return _execute(full, self.config, stdin, cwd=None, isolated=True)
            if code_file is not None:
                argv = [_resolve_python(self.config.python), code_file]
            full = _prlimit_argv(self.config) + list(argv or [])
            return _execute(full, self.config, stdin, cwd=self.scratch_dir, isolated=False)
        finally:
            if code_file is not None:
                os.unlink(code_file)

    # -- host-side file access (never follows links planted by sandboxed code) ------------------
    def read_file(self, relpath: str, max_bytes: int = 10_000_000) -> bytes:
        """Bytes of a regular file in scratch; :class:`UnsafePathError` for links, escapes, non-files."""
        fd = self._open_beneath(relpath, os.O_RDONLY | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UnsafePathError(f"{relpath!r} is not a regular file")
            if st.st_size > max_bytes:
                raise SandboxError(f"{relpath!r} is {st.st_size} bytes, more than max_bytes={max_bytes}")
            chunks, size = [], 0
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
                size += len(chunk)
                if size > max_bytes:
                    raise SandboxError(f"{relpath!r} grew beyond max_bytes={max_bytes}")
            return b"".join(chunks)
        finally:
            os.close(fd)

    def write_file(self, relpath: str, content: str | bytes, mode: int = 0o644) -> None:
        """Create or replace a regular file in scratch (parents created); refuses links and escapes."""
        data = content.encode("utf-8") if isinstance(content, str) else content
        fd = self._open_beneath(relpath, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK, mode=mode, make_parents=True)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnsafePathError(f"{relpath!r} is not a regular file")
            os.ftruncate(fd, 0)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if os.geteuid() == 0:
                os.fchown(fd, SANDBOX_UID, SANDBOX_UID)
        finally:
            os.close(fd)

    def _open_beneath(self, relpath: str, flags: int, mode: int = 0o644, make_parents: bool = False) -> int:
        parts = _split_relpath(relpath)
        root = os.path.realpath(self.scratch_dir)
        target = os.path.realpath(os.path.join(root, *parts))
        if not _is_under(target, root) or target == root:
            raise UnsafePathError(f"{relpath!r} resolves outside the scratch folder")
        # The realpath check above gives a clear message; the walk below is the actual guarantee
        # (no symlink is followed at any component, even if one appears between check and open).
        dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parts[:-1]:
                if make_parents:
                    try:
                        os.mkdir(part, 0o755, dir_fd=dir_fd)
                        _own(part, dir_fd=dir_fd)
                    except FileExistsError:
                        pass
                next_fd = _open_nofollow(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd, relpath)
                os.close(dir_fd)
                dir_fd = next_fd
            return _open_nofollow(parts[-1], flags, dir_fd, relpath, mode)
        finally:
            os.close(dir_fd)


def _open_nofollow(name: str, flags: int, dir_fd: int, relpath: str, mode: int = 0o644) -> int:
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
            raise UnsafePathError(f"{relpath!r} goes through a symlink or non-regular file") from e
        raise


def _split_relpath(relpath: str) -> list[str]:
    if not isinstance(relpath, str) or not relpath or "\x00" in relpath:
        raise UnsafePathError(f"invalid path {relpath!r}")
    if relpath.startswith("/"):
        # Accept the in-sandbox spelling /work/x for convenience; anything else absolute is refused.
        if not _is_under(relpath, SANDBOX_HOME):
            raise UnsafePathError(f"{relpath!r} is absolute and not under {SANDBOX_HOME}")
        relpath = relpath[len(SANDBOX_HOME):]
    parts = [p for p in relpath.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise UnsafePathError(f"{relpath!r} is empty or contains '..'")
    return parts


def _rmtree(path: str) -> None:
    def make_writable_and_retry(func: Any, p: str, _exc: Any) -> None:
        # Sandboxed code may leave folders without write permission (chmod 000); we own them, so fix and retry.
        try:
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=make_writable_and_retry)  # never follows symlinks


def _rmtree_all(paths: list[str]) -> None:
    for p in paths:
        if os.path.lexists(p):
            _rmtree(p)


# -- process execution ---------------------------------------------------------------------------


_MEMORY_MARKERS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory")


def _execute(argv: list[str], config: SandboxConfig, stdin: str | bytes | None, cwd: str | None,
             isolated: bool) -> SandboxResult:
    """Start ``argv``, stream its output under the caps, enforce the wall time, leave nothing alive."""
    data = stdin.encode("utf-8") if isinstance(stdin, str) else stdin
    info_r, info_w = os.pipe() if isolated else (-1, -1)
    if isolated:
        argv = argv[:1] + ["--info-fd", str(info_w)] + argv[1:]
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if data else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=_sandbox_env(SANDBOX_HOME if isolated else cwd or SANDBOX_HOME),
            start_new_session=True,  # fallback mode kills this process group; bwrap needs no terminal
            pass_fds=(info_w,) if isolated else (),
            **_drop_privileges(),
        )
    except OSError as e:
        if isolated:
            os.close(info_r)
            os.close(info_w)
        raise SandboxUnavailableError(f"could not start the sandbox ({e}). {_INSTALL_HINT}") from e
    if isolated:
        os.close(info_w)
    watcher = _Reaper(proc, info_r if isolated else None)
    try:
        out, err, truncated, reason = _pump(proc, data, config, start, watcher)
        if reason is None:
            try:
                proc.wait(timeout=max(0.0, start + config.wall_time_s - time.monotonic()))
            except subprocess.TimeoutExpired:
                reason = "wall_time"
                watcher.kill()
                proc.wait()
    finally:
        watcher.kill_and_wait_gone()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    wall = time.monotonic() - start
    code = proc.returncode
    if code is not None and code < 0:
        code = 128 - code  # same convention as bwrap and shells
    if reason is None:
        reason = _exit_reason(code, err)
    return SandboxResult(
        exit_code=code if code is not None else 137,
        stdout=out.decode("utf-8", errors="replace"),
        stderr=err.decode("utf-8", errors="replace"),
        timed_out=reason == "wall_time",
        killed_reason=reason,
        truncated=truncated,
        wall_s=wall,
    )


def _exit_reason(code: int | None, stderr: bytes) -> str | None:
    if code is None or code == 0:
        return None
    if 128 < code <= 128 + 64:
        sig = code - 128
        if sig == signal.SIGXCPU:
            return "cpu_time"
        if sig == signal.SIGXFSZ:
            return "file_size"
        try:
            return f"signal:{signal.Signals(sig).name}"
        except ValueError:
            return f"signal:{sig}"
    if any(m.encode() in stderr[-4000:] for m in _MEMORY_MARKERS):
        return "memory"
    return None


def _pump(proc: subprocess.Popen[bytes], stdin: bytes | None, config: SandboxConfig, start: float,
          watcher: "_Reaper") -> tuple[bytes, bytes, bool, str | None]:
    """Feed stdin and read stdout/stderr without blocking until EOF, the wall limit or the output cap."""
    buffers: dict[int, bytearray] = {}
    budget = config.max_output_bytes
    truncated = False
    reason: str | None = None
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None and proc.stderr is not None
    for pipe in (proc.stdout, proc.stderr):
        os.set_blocking(pipe.fileno(), False)
        buffers[pipe.fileno()] = bytearray()
        sel.register(pipe.fileno(), selectors.EVENT_READ)
    if watcher.info_fd is not None:
        sel.register(watcher.info_fd, selectors.EVENT_READ)
    pending = memoryview(stdin or b"")
    if proc.stdin is not None:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE)
    deadline = start + config.wall_time_s
    grace_until: float | None = None  # after a kill: drain briefly, never wait on a held pipe forever
    outputs = (proc.stdout.fileno(), proc.stderr.fileno())
    try:
        while any(fd in sel.get_map() for fd in outputs):
            now = time.monotonic()
            if reason is None and now >= deadline:
                reason = "wall_time"
                watcher.kill()
            if reason is not None:
                grace_until = grace_until or now + 1.0
                if now >= grace_until:
                    break
            limit = (grace_until if grace_until is not None else deadline) - now
            for key, events in sel.select(timeout=max(0.0, limit)):
                fd = key.fd
                if fd == watcher.info_fd:
                    if not watcher.read_info():
                        sel.unregister(fd)
                        watcher.close_info()
                    continue
                if events & selectors.EVENT_WRITE:
                    try:
                        pending = pending[os.write(fd, pending[:65536]):]
                    except BlockingIOError:
                        pass
                    except BrokenPipeError:  # the program stopped reading: fine
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(fd)
                        proc.stdin.close()  # type: ignore[union-attr]
                    continue
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(fd)
                    continue
                if reason is not None:
                    continue  # killed: drain and discard
                keep = chunk[:budget]
                buffers[fd] += keep
                budget -= len(keep)
                if len(keep) < len(chunk):
                    truncated = True
                    reason = "output_limit"
                    watcher.kill()
    finally:
        sel.close()
    return bytes(buffers[proc.stdout.fileno()]), bytes(buffers[proc.stderr.fileno()]), truncated, reason


class _Reaper:
    """Kills a run and waits until every process of it is gone.

    With bwrap, the sandbox's pid-namespace init (reported on ``--info-fd``)
    is held by a pidfd: SIGKILL to it makes the kernel kill the whole
    namespace, and the pidfd turns readable only after that is done. Without
    bwrap only the process group can be killed (daemons that setsid escape).
    """

    def __init__(self, proc: subprocess.Popen[bytes], info_fd: int | None):
        self.proc = proc
        self.isolated = info_fd is not None
        self.info_fd = info_fd
        self._info = b""
        self._pidfd: int | None = None

    def read_info(self) -> bool:
        """Consume available ``--info-fd`` output; False at EOF."""
        assert self.info_fd is not None
        try:
            chunk = os.read(self.info_fd, 4096)
        except BlockingIOError:
            return True
        self._info += chunk
        return bool(chunk)

    def close_info(self) -> None:
        """After EOF on the info pipe: take a pidfd on the namespace init it named."""
        assert self.info_fd is not None
        os.close(self.info_fd)
        self.info_fd = None
        try:
            pid = int(json.loads(self._info.decode() or "{}").get("child-pid", 0))
        except (ValueError, AttributeError):
            pid = 0
        if pid <= 0:
            return
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return  # already gone and reaped: so is its namespace
        if _is_namespace_init(pid):
            self._pidfd = pidfd
        else:  # the pid was reused by an unrelated process: never signal it
            os.close(pidfd)

    def kill(self) -> None:
        if self._pidfd is not None:
            # Only the init: bwrap outside then reaps it and exits. Killing bwrap too would orphan the
            # init to the host's pid 1 (a zombie until that reaps it).
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
                return
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            if not self.isolated:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)  # fallback mode: the process group
                except ProcessLookupError:
                    pass
            self.proc.kill()  # bwrap: --die-with-parent takes the namespace down as well

    def kill_and_wait_gone(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        try:
            self.proc.wait(timeout=_KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.info_fd is not None:  # bwrap finished before we read all its info: it is buffered
            os.set_blocking(self.info_fd, False)
            with selectors.DefaultSelector() as sel:
                sel.register(self.info_fd, selectors.EVENT_READ)
                give_up = time.monotonic() + 1.0
                while self.read_info() and time.monotonic() < give_up:
                    sel.select(timeout=0.05)
            self.close_info()
        if self._pidfd is not None:
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            with selectors.DefaultSelector() as sel:
                sel.register(self._pidfd, selectors.EVENT_READ)  # readable once the namespace is empty
                sel.select(timeout=_KILL_GRACE_S)
            os.close(self._pidfd)
            self._pidfd = None
        elif not self.isolated:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # leftovers of the group
            except (ProcessLookupError, PermissionError):
                pass


def _is_namespace_init(pid: int) -> bool:
    """True when ``pid`` is pid 1 of a nested pid namespace (what bwrap's info-fd reports)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    ids = line.split()[1:]
                    return len(ids) >= 2 and ids[-1] == "1"
    except OSError:
        return False
    return False


# -- tools -------------------------------------------------------------------------------------


def format_result(result: SandboxResult, config: SandboxConfig | None = None) -> str:
    """The text a model sees for one run: exit code, why it was killed, stdout, stderr, truncation."""
    lines = [f"exit_code: {result.exit_code}"]
    cfg = config or SandboxConfig()
    notes = {
        "wall_time": f"killed: wall-clock limit of {cfg.wall_time_s:g} s exceeded (timed out)",
        "cpu_time": f"killed: CPU time limit of {cfg.cpu_time_s} s exceeded",
        "memory": f"out of memory: the limit is {cfg.memory_mb} MiB of address space per process",
        "output_limit": f"killed: output exceeded {cfg.max_output_bytes} bytes",
        "file_size": f"killed: a file grew beyond {cfg.max_file_size_mb} MiB",
    }
    if result.killed_reason:
        lines.append(notes.get(result.killed_reason, f"killed: {result.killed_reason}"))
    lines += ["stdout:", result.stdout.rstrip("\n"), "stderr:", result.stderr.rstrip("\n")]
    if result.truncated:
        lines.append(f"[output truncated at {cfg.max_output_bytes} bytes]")
    return "\n".join(lines)


class _SandboxTool:
    """One string argument in, :func:`format_result` text out; the blocking run happens in a worker thread."""

    name: str
    argument: str
    argument_doc: str
    description: str
    has_implementation = True

    def __init__(self, sandbox: Sandbox, name: str | None = None):
        self.sandbox = sandbox
        if name is not None:
            self.name = name

    def schema(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": {
                    "type": "object",
                    "properties": {self.argument: {"type": "string", "description": self.argument_doc}},
                    "required": [self.argument],
                    "additionalProperties": False,
                },
            },
        }

    async def acall(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        value = arguments.get(self.argument)
        if not isinstance(value, str):
            raise ToolFailure(ToolErrorKind.INVALID_ARGUMENTS, f"`{self.argument}` must be a string")
        try:
            result = await asyncio.to_thread(self._run, value)
        except SandboxError as e:  # the sandbox itself failed: not the model's fault
            raise ToolFailure(ToolErrorKind.INFRASTRUCTURE, str(e)) from e
        # Timeouts, crashes and limits are the program's outcome: text for the model, not a tool error.
        return format_result(result, self.sandbox.config)

    def _run(self, value: str) -> SandboxResult:
        raise NotImplementedError


class PythonTool(_SandboxTool):
    """``run_python(code)``: run Python source in the rollout's sandbox (cwd /work, no network)."""

    name = "run_python"
    argument = "code"
    argument_doc = "Python 3 source code to run as a script. Print what you want to see."
    description = (
        "Run Python code in an isolated sandbox (no network; files persist in the working folder /work "
        "for this task). Returns the exit code, stdout and stderr."
    )

    def _run(self, value: str) -> SandboxResult:
        return self.sandbox.run_python(value)


class ShellTool(_SandboxTool):
    """``run_shell(command)``: run a bash command line in the rollout's sandbox."""

    name = "run_shell"
    argument = "command"
    argument_doc = "A bash command line."
    description = (
        "Run a shell command in an isolated sandbox (no network; files persist in the working folder /work "
        "for this task). Returns the exit code, stdout and stderr."
    )

    def _run(self, value: str) -> SandboxResult:
        return self.sandbox.run_shell(value)
