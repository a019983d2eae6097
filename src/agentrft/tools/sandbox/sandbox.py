"""The :class:`Sandbox`: one rollout's private scratch folder and isolated, limited execution in it.

What: a :class:`Sandbox` owns a scratch folder (one per rollout), runs argvs,
Python source or shell lines in it and returns a
:class:`~agentrft.tools.sandbox.core.SandboxResult`; it reads and writes files
there for the host without following links the code planted. It composes the
package's parts: the isolation argv from :mod:`.policy`, the run itself
through :func:`~agentrft.tools.sandbox.process.run_process`, host-side files
through :mod:`.files`.

Why a class with state: the scratch folder, the synthetic ``/etc`` files and
the checked bwrap path live as long as the rollout, and runs may come from
several threads at once (tool calls of one turn run concurrently); everything
per-run (the code file, the argv) is built fresh for each call.

Without bwrap (or when its self-check fails) :class:`Sandbox` raises
:class:`~agentrft.tools.sandbox.core.SandboxUnavailableError`, unless
``allow_unsafe_fallback=True``: then it runs plain subprocesses with the same
rlimits in the scratch folder, with **no** filesystem or network isolation,
and warns loudly.
"""

from __future__ import annotations

import os
import tempfile
import uuid
import warnings
import weakref
from typing import Sequence

from agentrft.tools.sandbox.core import (
    CODE_DIR,
    INSTALL_HINT,
    SANDBOX_HOME,
    SANDBOX_UID,
    SandboxConfig,
    SandboxError,
    SandboxResult,
    SandboxUnavailableError,
)
from agentrft.tools.sandbox.files import own, read_beneath, rmtree_all, write_beneath
from agentrft.tools.sandbox.policy import (
    _INIT_ARGV,
    _bwrap_argv,
    _bwrap_self_check,
    _etc_passwd_files,
    _launch,
    _prlimit_argv,
    _python_binds,
    _resolve_python,
    _sandbox_env,
)
from agentrft.tools.sandbox.process import RunLimits, exit_reason, run_process

__all__ = ["Sandbox"]


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
            self._bwrap: str | None = _bwrap_self_check(self.config.bwrap)
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
            own(scratch)
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
        self._finalizer = weakref.finalize(self, rmtree_all, owned)
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
                    argv = [_resolve_python(self.config.python), f"{CODE_DIR}/main.py"]
                    binds += ["--ro-bind", code_file, f"{CODE_DIR}/main.py"]
                full = _bwrap_argv(self._bwrap, self.config, self.scratch_dir, binds)
                full += _prlimit_argv(self.config) + _INIT_ARGV + list(argv or [])
                return self._execute(full, stdin, cwd=None, home=SANDBOX_HOME)
            if code_file is not None:
                argv = [_resolve_python(self.config.python), code_file]
            full = _prlimit_argv(self.config) + list(argv or [])
            return self._execute(full, stdin, cwd=self.scratch_dir, home=self.scratch_dir)
        finally:
            if code_file is not None:
                os.unlink(code_file)

    def _execute(self, argv: list[str], stdin: str | bytes | None, cwd: str | None, home: str) -> SandboxResult:
        data = stdin.encode("utf-8") if isinstance(stdin, str) else stdin
        limits = RunLimits(wall_time_s=self.config.wall_time_s, max_output_bytes=self.config.max_output_bytes)
        try:
            result = run_process(argv, _launch(self.isolated), limits, stdin=data, cwd=cwd, env=_sandbox_env(home))
        except OSError as e:
            raise SandboxUnavailableError(f"could not start the sandbox ({e}). {INSTALL_HINT}") from e
        reason = result.killed_reason or exit_reason(result.exit_code, result.stderr)
        return SandboxResult(
            exit_code=result.exit_code,
            stdout=result.stdout.decode("utf-8", errors="replace"),
            stderr=result.stderr.decode("utf-8", errors="replace"),
            timed_out=reason == "wall_time",
            killed_reason=reason,
            truncated=result.truncated,
            wall_s=result.wall_s,
        )

    # -- host-side file access (never follows links planted by sandboxed code) ------------------
    def read_file(self, relpath: str, max_bytes: int = 10_000_000) -> bytes:
        """Bytes of a regular file in scratch; :class:`UnsafePathError` for links, escapes, non-files."""
        return read_beneath(self.scratch_dir, relpath, max_bytes)

    def write_file(self, relpath: str, content: str | bytes, mode: int = 0o644) -> None:
        """Create or replace a regular file in scratch (parents created); refuses links and escapes."""
        write_beneath(self.scratch_dir, relpath, content, mode)
