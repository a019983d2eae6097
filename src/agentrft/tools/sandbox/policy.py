"""The sandbox's isolation policy: what a run can see, who it runs as, and which limits bind it.

What: the `bubblewrap`_ command line of one run (:func:`_bwrap_argv`), the
``prlimit`` prefix that sets its rlimits (:func:`_prlimit_argv`), its whole
environment (:func:`_sandbox_env`), the identity it is started as
(:func:`_launch`), and the one-time self-check that bwrap works here
(:func:`bwrap_available`). Starting, streaming and killing the resulting argv
is :mod:`.process`'s job; this module only decides the argv.

Each run gets:

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
* a pid-namespace init that is a ``/bin/sh`` running the program as pid 2
  (:data:`_INIT_ARGV`), so the program keeps normal signal semantics and
  :mod:`.process` can end the whole namespace with one SIGKILL.

Without bwrap the fallback keeps only the ``prlimit`` prefix, the scratch cwd
and the environment, in a plain process group.

.. _bubblewrap: https://github.com/containers/bubblewrap
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from typing import Sequence

from agentrft.tools.sandbox.core import (
    INSTALL_HINT,
    SANDBOX_HOME,
    SANDBOX_UID,
    SYSTEM_PATH,
    SandboxConfig,
    SandboxUnavailableError,
    is_under,
)
from agentrft.tools.sandbox.files import own, rmtree
from agentrft.tools.sandbox.process import Containment, Launch, RunLimits, run_process

__all__ = ["bwrap_available"]

# pid 1 of the sandbox: a shell that runs the program as pid 2 (so it has normal signal semantics:
# a namespace init ignores SIGXCPU/SIGTERM), reaps orphans, and exits with its status (128+N on signal N).
_INIT_ARGV = ["/bin/sh", "-c", '"$@"; exit $?', "sandbox-init"]
_SYSTEM_DIRS = ("/usr",)
_MERGED_USR_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "alternatives")
_PROBE_LIMITS = RunLimits(wall_time_s=30.0, max_output_bytes=64_000)


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
        raise SandboxUnavailableError(f"bubblewrap executable {bwrap!r} not found. {INSTALL_HINT}")
    with _self_check_lock:
        if path not in _self_check_cache:
            _self_check_cache[path] = _probe(path)
    error = _self_check_cache[path]
    if error is not None:
        raise SandboxUnavailableError(f"bubblewrap at {path} failed its self-check: {error}. {INSTALL_HINT}")
    return path


def _probe(bwrap_path: str) -> str | None:
    """Run one write in a default sandbox through the real launch path; the error text, or None when it works."""
    if _which("prlimit") is None:
        return "`prlimit` (util-linux) is needed to apply resource limits and was not found"
    state = tempfile.mkdtemp(prefix="agentrft-sbx-check-")
    try:
        own(state)
        argv = _bwrap_argv(bwrap_path, SandboxConfig(), scratch=state)
        argv += _prlimit_argv(SandboxConfig()) + ["/bin/sh", "-c", "echo ok > /work/probe"]
        result = run_process(argv, _launch(isolated=True), _PROBE_LIMITS, env=_sandbox_env())
        if result.killed_reason is not None:
            return f"the probe was killed ({result.killed_reason})"
        if result.exit_code != 0:
            return f"exit code {result.exit_code}: {result.stderr.decode(errors='replace').strip()[:500]}"
        if not os.path.exists(os.path.join(state, "probe")):
            return "the scratch folder was not writable inside the sandbox"
        return None
    except (OSError, subprocess.SubprocessError) as e:
        return f"{type(e).__name__}: {e}"
    finally:
        rmtree(state)


# -- identity and environment ------------------------------------------------------------------


def _launch(isolated: bool) -> Launch:
    """How :func:`~agentrft.tools.sandbox.process.run_process` starts a run: held by its pid namespace or group.

    As root the run starts as the sandbox uid, so the kernel enforces ``RLIMIT_NPROC`` on it.
    """
    return Launch(
        containment=Containment.BWRAP_PID_NAMESPACE if isolated else Containment.PROCESS_GROUP,
        run_as=SANDBOX_UID if os.geteuid() == 0 else None,
    )


def _resolve_python(python: str) -> str:
    """Absolute path of the configured interpreter (a bare name is looked up on the sandbox PATH)."""
    return python if os.path.isabs(python) else (shutil.which(python, path=SYSTEM_PATH) or python)


def _sandbox_env(home: str = SANDBOX_HOME) -> dict[str, str]:
    """The whole environment of sandboxed code (nothing of ours leaks in: no tokens, no proxies)."""
    return {
        "PATH": SYSTEM_PATH,
        "HOME": home,
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": home,  # the model's own modules in /work import like in a project
    }


def _etc_passwd_files() -> dict[str, str]:
    """The synthetic ``/etc`` files of every sandbox: name -> text."""
    return {
        "passwd": (
            f"root:x:0:0:root:/root:/bin/sh\n"
            f"sandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:sandbox:{SANDBOX_HOME}:/bin/sh\n"
        ),
        "group": f"root:x:0:\nsandbox:x:{SANDBOX_UID}:\n",
        "hosts": "127.0.0.1 localhost sandbox\n::1 localhost\n",
    }


# -- command lines -----------------------------------------------------------------------------


def _python_binds(python: str) -> list[str]:
    """Read-only binds so ``python`` works inside: its venv folder and base prefix, unless under /usr."""
    python = _resolve_python(python)
    if not os.path.isabs(python):
        return []
    prefixes: list[str] = []
    for p in (python, os.path.realpath(python)):
        prefix = os.path.dirname(os.path.dirname(p))
        if not any(is_under(p, d) for d in _SYSTEM_DIRS) and prefix not in prefixes:
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
    """``prlimit`` with every rlimit of ``config``, ending in ``--``: the program's argv follows."""
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
