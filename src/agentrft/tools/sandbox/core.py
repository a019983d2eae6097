"""The sandbox's vocabulary: its errors, its config, its result, and the constants its modules share.

What: :class:`SandboxConfig` (the limits and layout of one run),
:class:`SandboxResult` (what one run produced), the error types a caller
catches, and the fixed facts of the layout: the uid code runs as, where the
scratch folder appears inside, the PATH it sees.

Why a module of its own: the isolation policy (:mod:`.policy`), host-side file
access (:mod:`.files`) and the :class:`~agentrft.tools.sandbox.Sandbox` all
need these; keeping them here lets each of those import only what it uses,
with no cycle between them.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentrft.errors import AgentRFTError, ConfigError

SANDBOX_UID = 65534  # "nobody": owns nothing on the host
SANDBOX_HOME = "/work"  # where the scratch folder appears inside the sandbox
CODE_DIR = "/sandbox"  # read-only folder inside holding the Python source of a run
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
INSTALL_HINT = (
    "Install bubblewrap (Debian/Ubuntu: `apt-get install -y bubblewrap`; Fedora: `dnf install bubblewrap`) "
    "and make sure unprivileged user namespaces are enabled (sysctl kernel.unprivileged_userns_clone=1 "
    "or user.max_user_namespaces > 0; Ubuntu 24.04+: an AppArmor profile for bwrap). "
    "Set SandboxConfig(allow_unsafe_fallback=True) only if you accept running model-written code "
    "without isolation."
)


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


def is_under(path: str, root: str) -> bool:
    """True when ``path`` is ``root`` or lies beneath it (plain string test on normalised paths)."""
    return path == root or path.startswith(root.rstrip("/") + "/")
