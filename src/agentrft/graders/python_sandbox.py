"""Where a python grader's code runs: the bubblewrap sandbox of one grader worker, and its supervisor program.

What: :func:`worker_command` builds the command line of one *grader worker*
-- a long-lived ``python`` supervisor inside `bubblewrap`_ that loads one
grader's source once and grades many samples, one forked child per grade
(:data:`SUPERVISOR`) -- and :func:`package_binds` decides which installed
packages the grader may import. Starting, talking to and killing workers is
:mod:`agentrft.graders.python_pool`.

The sandbox is the code tools' (:mod:`agentrft.tools.sandbox.policy`: the
same namespaces, identity, read-only system root, synthetic ``/etc`` and
``prlimit`` limits), with a grader's layout:

* the interpreter running agentrft, with its standard library, bound
  read-only where it lives (``sys.base_prefix``), started with ``-I -S -B``
  (no environment, no site-packages, no bytecode written);
* the packages OpenAI documents for python graders (:data:`GRADER_PACKAGES`)
  that are installed here, plus their dependencies, each bound read-only into
  :data:`PACKAGES_DIR`. Nothing else of the venv: not agentrft, torch or the
  editable checkout;
* a private in-memory scratch: ``/work`` (the cwd and ``HOME``, ``disk_mb``)
  and ``/tmp`` and ``/dev/shm`` (64 MiB each) are size-capped tmpfs. No host
  folder is writable and none of the host's home, checkout or run folders
  exists inside;
* no network (a new network namespace with only its own ``lo``).

**Departure when running as root:** the code tools start bwrap as uid 65534
so that the kernel enforces ``RLIMIT_NPROC`` (it never does for uid 0); an
interpreter under ``/root`` is then unreachable and the code tools refuse it.
A grader must run the interpreter that agentrft runs on, so here the paths
uid 65534 cannot reach are first bound, by root, into a private mount
namespace (``unshare --mount``: the host's mounts do not change), and bwrap
is started from there as uid 65534 by ``setpriv``.

.. _bubblewrap: https://github.com/containers/bubblewrap
"""

from __future__ import annotations

import atexit
import importlib.metadata
import os
import re
import stat
import sys
import tempfile
import threading
from dataclasses import dataclass
from functools import lru_cache

from agentrft.graders.python_protocol import PROTOCOL_CODE
from agentrft.tools.sandbox.core import (
    SANDBOX_HOME,
    SANDBOX_UID,
    SandboxConfig,
    SandboxUnavailableError,
    is_under,
)
from agentrft.tools.sandbox.files import rmtree
from agentrft.tools.sandbox.policy import (
    _INIT_ARGV,
    _bwrap_argv,
    _etc_passwd_files,
    _prlimit_argv,
    _sandbox_env,
    _which,
)

__all__ = ["BWRAP", "GRADER_PACKAGES", "INSTALL_HINT", "PACKAGES_DIR", "SCRATCH_DIRS", "SUPERVISOR", "WorkerSpec",
           "interpreter", "package_binds", "resolve_bwrap", "worker_command", "worker_config"]

INSTALL_HINT = (
    "Install bubblewrap 0.8 or later (Debian/Ubuntu: `apt-get install -y bubblewrap`) and make sure unprivileged "
    "user namespaces are enabled (docs/sandbox.md, Requirements)."
)
BWRAP = "bwrap"
"""The bubblewrap executable graders run under: a name looked up on PATH, or a path."""

GRADER_PACKAGES = (
    "numpy", "scipy", "sympy", "pandas", "rapidfuzz", "scikit-learn", "rouge-score", "deepdiff", "jsonschema",
    "pydantic", "pyyaml", "nltk", "sqlparse", "rdkit", "scikit-bio", "ast-grep-py",
)
"""The extra packages OpenAI's python grader image documents; those installed here are importable."""

PACKAGES_DIR = "/opt/grader-packages"
"""Where the importable packages appear inside the sandbox (the only entry added to ``sys.path``)."""

SCRATCH_DIRS = (SANDBOX_HOME, "/tmp", "/dev/shm")
"""The writable folders inside; what a grade leaves there is removed before the next grade."""

SUPERVISOR_CPU_S = 86_400
"""RLIMIT_CPU of the long-lived supervisor; each grade's child sets ``cpu_s`` on itself."""

_SMALL_TMPFS_MB = 64  # /tmp and /dev/shm
# BLAS thread pools of one thread: threads count against max_processes, and grades stay reproducible
_THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass(frozen=True)
class WorkerSpec:
    """Everything that makes two grader workers interchangeable: a pool holds workers of one spec only."""

    source: str
    timeout_s: float
    cpu_s: int
    memory_mb: int
    file_size_mb: int
    disk_mb: int
    max_processes: int
    max_output_bytes: int
    extra_packages: tuple[str, ...] = ()
    max_workers: int = 8


# The supervisor: PROTOCOL_CODE, then this. It never reads its stdin or writes its stdout after the first
# lines: the host's requests and reports go through private copies of those descriptors, so prints -- the
# grader's, or a library's at import -- land on stderr.
_SUPERVISOR_MAIN = r"""
import ctypes, shutil, site
requests = os.fdopen(os.dup(0), "rb")
reports = os.dup(1)
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
os.close(null)
os.dup2(2, 1)
if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER: orphans come back here
    raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
cfg = json.loads(requests.readline())
for folder in cfg["site_dirs"]:
    site.addsitedir(folder)
try:
    grade = load(cfg["source"])
    load_error = None
except BaseException as e:
    grade, load_error = None, "".join(traceback.format_exception(e))[-4000:]
kept = {folder: set(os.listdir(folder)) for folder in cfg["scratch_dirs"]}  # what loading wrote serves every grade


def grade_in_child(request):
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read_end)
            os.close(reports)
            os.close(requests.fileno())
            resource.setrlimit(resource.RLIMIT_CPU, (cfg["cpu_s"], cfg["cpu_s"] + 1))  # SIGXCPU, then SIGKILL
            report_to(write_end, result_message(lambda: grade(request["sample"], request["item"])))
        except BaseException:
            traceback.print_exc()
            code = 70
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        return wait_child(pid, read_end, None)
    finally:
        os.close(read_end)


def kill_leftovers():
    # Everything in this pid namespace but its init and this process: what the grade started, setsid daemons too.
    while True:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            return
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break


def clear_scratch():
    cleared = True
    for folder, names in kept.items():
        for name in set(os.listdir(folder)) - names:
            path = os.path.join(folder, name)
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
            except OSError:
                cleared = False
    return cleared


os.write(reports, b'{"status": "ready"}\n')
for line in requests:
    request = json.loads(line)
    NONCE = request["nonce"]
    out = {"status": "error", "detail": load_error} if load_error is not None else grade_in_child(request)
    kill_leftovers()
    out["scratch_cleared"] = clear_scratch()
    report_to(reports, out)
"""

SUPERVISOR = PROTOCOL_CODE + _SUPERVISOR_MAIN
"""The program a worker runs (``python -c``); its first stdin line is the worker's config."""


def resolve_bwrap() -> str:
    """The bubblewrap executable's path; :class:`SandboxUnavailableError` when there is none."""
    path = _which(BWRAP)
    if path is None:
        raise SandboxUnavailableError(f"bubblewrap executable {BWRAP!r} not found. {INSTALL_HINT}")
    for tool in ("prlimit",) + (("unshare", "setpriv", "mount") if os.geteuid() == 0 else ()):
        if _which(tool) is None:
            raise SandboxUnavailableError(f"`{tool}` (util-linux) is needed to sandbox python graders and was not "
                                          f"found. {INSTALL_HINT}")
    return path


def worker_config(spec: WorkerSpec) -> dict[str, object]:
    """The first line a worker reads: its source and where things are inside."""
    return {"source": spec.source, "cpu_s": int(spec.cpu_s), "site_dirs": [PACKAGES_DIR],
            "scratch_dirs": list(SCRATCH_DIRS)}


def worker_command(spec: WorkerSpec, bwrap: str, info_fd: int) -> tuple[list[str], int | None, dict[str, str]]:
    """``(argv, run_as, env)`` of one worker: bwrap reporting its namespace init on ``info_fd``.

    ``run_as`` is the uid (and gid) to start the argv as, or ``None``.
    """
    exe, prefixes = interpreter()
    binds = [(p, p) for p in prefixes] + [(path, f"{PACKAGES_DIR}/{name}")
                                         for path, name in package_binds(spec.extra_packages)]
    as_root = os.geteuid() == 0
    staged = [host for host, _ in binds if as_root and not _reachable_by_sandbox_uid(host)]
    state = _state_dir()
    stage_of = {host: f"{state}/stage/{i}" for i, host in enumerate(staged)}
    mounts = [arg for name in _etc_passwd_files() for arg in ("--ro-bind", f"{state}/etc-{name}", f"/etc/{name}")]
    for host, inside in binds:
        mounts += ["--ro-bind", stage_of.get(host, host), inside]
    # A size-capped tmpfs over /work hides the (empty) host folder the shared layout binds there.
    mounts += ["--size", str(spec.disk_mb * 2**20), "--tmpfs", SANDBOX_HOME]
    config = SandboxConfig(cpu_time_s=SUPERVISOR_CPU_S, memory_mb=spec.memory_mb, max_processes=spec.max_processes,
                           max_file_size_mb=spec.file_size_mb, tmp_size_mb=_SMALL_TMPFS_MB)
    bwrap_argv = _bwrap_argv(bwrap, config, scratch=f"{state}/empty", extra_binds=mounts)
    argv = [bwrap_argv[0], "--info-fd", str(info_fd), *bwrap_argv[1:], *_prlimit_argv(config), *_INIT_ARGV,
            exe, "-I", "-S", "-B", "-c", SUPERVISOR]
    env = {**_sandbox_env(SANDBOX_HOME), **_THREAD_ENV}
    if not staged:
        return argv, (SANDBOX_UID if as_root else None), env
    drop = [_which("setpriv") or "setpriv", f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups", "--"]
    stage = [_which("unshare") or "unshare", "--mount", "--propagation", "private", "--",
             "/bin/sh", "-c", _STAGE_SCRIPT, "stage", f"{state}/stage", *staged, "--"]
    return stage + drop + argv, None, env


# Run as root in a private mount namespace: a tmpfs on the stage folder, and in it one bind per argument
# (numbered like worker_command's stage_of), then exec the rest. Exit 125 means the staging failed.
_STAGE_SCRIPT = (
    'stage=$1; shift; mount -t tmpfs -o mode=0755,size=1m agentrft-stage "$stage" || exit 125; i=0; '
    'while [ "$1" != -- ]; do '
    'if [ -d "$1" ]; then mkdir "$stage/$i"; else : > "$stage/$i"; fi && mount --rbind "$1" "$stage/$i" || exit 125; '
    'i=$((i+1)); shift; done; shift; exec "$@"'
)


@lru_cache(maxsize=1)
def interpreter() -> tuple[str, tuple[str, ...]]:
    """The interpreter a worker runs (the one running agentrft, outside any venv) and the prefixes to bind for it."""
    exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    prefixes = sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)})
    binds = [p for p in prefixes if not is_under(p, "/usr")]
    if not any(is_under(exe, p) for p in [*binds, "/usr"]):
        binds.append(os.path.dirname(exe))
    return exe, tuple(binds)


@lru_cache(maxsize=8)
def package_binds(extra: tuple[str, ...] = ()) -> tuple[tuple[str, str], ...]:
    """``(host path, name)`` of every top-level entry of the allowed distributions and their dependencies.

    The allowed ones are :data:`GRADER_PACKAGES` and ``extra`` (distribution names); a dependency is any
    requirement without an ``extra ==`` marker. Those not installed are skipped.
    """
    todo, seen, entries = [*GRADER_PACKAGES, *extra], set(), {}
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        for requirement in dist.requires or ():
            marker = requirement.partition(";")[2]
            match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
            if match and "extra" not in marker:
                todo.append(match.group(1))
        root = str(dist.locate_file(""))
        for file in dist.files or ():
            top = file.parts[0] if file.parts else ""
            if top and top not in ("..", "__pycache__") and top not in entries:
                entries[top] = os.path.join(root, top)
    return tuple(sorted((path, name) for name, path in entries.items() if os.path.exists(path)))


def _reachable_by_sandbox_uid(path: str) -> bool:
    """Whether uid 65534 (in no group of ours) can reach ``path`` and read it: every folder above searchable."""
    path = os.path.realpath(path)
    parts = path.split("/")
    for i in range(1, len(parts) + 1):
        here = "/".join(parts[:i]) or "/"
        try:
            st = os.stat(here)
        except OSError:
            return False
        shift = 6 if st.st_uid == SANDBOX_UID else 3 if st.st_gid == SANDBOX_UID else 0
        need = stat.S_IROTH if here == path and not stat.S_ISDIR(st.st_mode) else stat.S_IXOTH
        if not (st.st_mode >> shift) & need:
            return False
    return True


_state_lock = threading.Lock()
_state: list[str] = []


def _state_dir() -> str:
    """The process's folder of files every worker binds: ``/etc`` files, an empty folder, the stage mount point."""
    with _state_lock:
        if not _state:
            state = tempfile.mkdtemp(prefix="agentrft-grader-")
            os.chmod(state, 0o755)  # uid 65534 reaches the /etc files; nothing here is writable but by us
            for name, text in _etc_passwd_files().items():
                with open(os.path.join(state, f"etc-{name}"), "w") as f:
                    f.write(text)
                os.chmod(os.path.join(state, f"etc-{name}"), 0o644)
            os.mkdir(os.path.join(state, "empty"), 0o755)
            os.mkdir(os.path.join(state, "stage"), 0o755)
            _state.append(state)
            atexit.register(_remove_state, state, os.getpid())
        return _state[0]


def _remove_state(state: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # not from a forked child of the process that made it
        rmtree(state)
