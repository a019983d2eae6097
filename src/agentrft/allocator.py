"""The memory allocator of agentrft's processes: tcmalloc where installed, because page faults cost a CPU step.

Why: a training step allocates and frees the same large tensors every time
(the LM head's [V, H] gradient, vocabulary-sized logits, the optimizer's
temporaries). glibc's malloc serves blocks above its mmap threshold (at most
32 MB) with fresh ``mmap`` calls and gives them back with ``munmap`` on free,
so every step touches new pages, and on a virtual machine each first touch is
a trip to the hypervisor. Measured on the GRPO bench job (bundled model, full
fine-tuning, 2 cores, steps 3-5): 380,000-440,000 page faults and 1.6-2.2 s
of kernel time per training step under glibc; 2,500-10,500 faults and under
0.1 s under tcmalloc, which keeps freed memory for the next step; the training
step goes from 6.1-6.5 s to 3.8-4.6 s, and peak RSS drops from 3.8 to 3.4 GB.
Raising glibc's thresholds with ``mallopt`` cut the faults by half but grew
peak RSS to 4.7 GB (fragmentation); PyTorch's ``THP_MEM_ALLOC_ENABLE`` cut
the fault count tenfold but not the kernel time.

How: a library cannot swap the allocator of a running process, so the
``agentrft`` command re-executes itself once, at start, with tcmalloc in
``LD_PRELOAD`` (:func:`ensure_preferred`); the re-executed process restores
the caller's ``LD_PRELOAD`` in its environment at once, so the tools,
sandboxes and browsers it starts run on their usual allocator.
``AGENTRFT_ALLOCATOR=system`` turns this off; ``make`` installs the Debian
package ``libtcmalloc-minimal4``; without it everything runs on glibc.
Library users (``import agentrft``) get the same by starting Python with
``LD_PRELOAD=libtcmalloc_minimal.so.4`` or through :func:`preload_environ`.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from collections.abc import Mapping, MutableMapping

__all__ = ["ALLOCATOR_ENV", "active", "ensure_preferred", "find_tcmalloc", "preload_environ"]

ALLOCATOR_ENV = "AGENTRFT_ALLOCATOR"
"""``auto`` (default: tcmalloc where installed) or ``system`` (the C library's malloc)."""

_SAVED = "_AGENTRFT_CALLER_LD_PRELOAD"  # the caller's LD_PRELOAD across the re-exec ("" when it had none)
_LIBRARIES = ("tcmalloc_minimal", "tcmalloc")
_QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}  # no stderr line per allocation above 1 GB


def find_tcmalloc() -> str | None:
    """The soname of an installed tcmalloc (the dynamic loader finds it by that name), or None."""
    for name in _LIBRARIES:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def active() -> str:
    """``tcmalloc`` when this process runs on it, else ``system``."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            return "tcmalloc" if "libtcmalloc" in f.read() else "system"
    except OSError:  # not Linux: nothing here preloads anything
        return "system"


def _wanted(environ: Mapping[str, str]) -> str:
    value = environ.get(ALLOCATOR_ENV, "auto").strip().lower() or "auto"
    if value not in ("auto", "system"):
        raise SystemExit(f"error: {ALLOCATOR_ENV}={environ[ALLOCATOR_ENV]!r}: use auto or system")
    return value


def preload_environ(environ: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """A copy of ``environ`` that starts a process on tcmalloc, or None when it would not change anything
    (turned off, not installed, or already preloaded)."""
    environ = os.environ if environ is None else environ
    if _wanted(environ) == "system" or not sys.platform.startswith("linux"):
        return None
    lib = find_tcmalloc()
    caller = environ.get("LD_PRELOAD", "")
    if lib is None or "tcmalloc" in caller:
        return None
    env = {**environ, **_QUIET, "LD_PRELOAD": f"{lib}:{caller}" if caller else lib, _SAVED: caller}
    return env


def ensure_preferred(argv: list[str] | None = None, environ: MutableMapping[str, str] | None = None) -> None:
    """Re-execute this process on tcmalloc if it is wanted, installed and not loaded yet (never returns then).

    Call first thing in a command-line entry point. In the re-executed process it restores the caller's
    ``LD_PRELOAD`` in ``environ`` (children start on their usual allocator) and returns.
    """
    environ = os.environ if environ is None else environ
    if _SAVED in environ:  # the second run: put the caller's LD_PRELOAD back; never exec twice
        caller = environ.pop(_SAVED)
        if caller:
            environ["LD_PRELOAD"] = caller
        else:
            environ.pop("LD_PRELOAD", None)
        return
    if active() == "tcmalloc":
        return
    env = preload_environ(environ)
    if env is None:
        return
    argv = list(sys.orig_argv) if argv is None else argv
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)
