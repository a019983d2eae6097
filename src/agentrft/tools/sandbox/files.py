"""Host-side access to a sandbox's scratch folder that links planted by sandboxed code cannot redirect.

What: :func:`read_beneath` and :func:`write_beneath` read and write a regular
file given by a scratch-relative path; :func:`own` hands what the host creates
to the sandbox uid; :func:`rmtree` removes folders the code may have made
unwritable.

Why: the scratch folder is written by hostile code. A symlink it planted
(``passwd -> /etc/passwd``, ``out -> ~/.ssh/authorized_keys``) would make a
naive ``open(os.path.join(scratch, relpath))`` read or overwrite host files,
and a FIFO would block the trainer forever. So each path is walked one
component at a time from a descriptor of the scratch folder with
``O_NOFOLLOW`` (a link anywhere fails, even one swapped in between a check and
the open), files are opened non-blocking, and only regular files are accepted.
``openat2(RESOLVE_BENEATH)`` would do the same in one call but Python has no
binding for it.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from typing import Any

from agentrft.tools.sandbox.core import SANDBOX_HOME, SANDBOX_UID, SandboxError, UnsafePathError, is_under

__all__ = ["own", "read_beneath", "rmtree", "rmtree_all", "write_beneath"]


def own(path: str, dir_fd: int | None = None) -> None:
    """Give what we create in scratch to the sandbox uid (only matters when we are root: code runs as 65534)."""
    if os.geteuid() == 0:
        os.chown(path, SANDBOX_UID, SANDBOX_UID, dir_fd=dir_fd, follow_symlinks=False)


def read_beneath(root: str, relpath: str, max_bytes: int) -> bytes:
    """Bytes of a regular file under ``root``; :class:`UnsafePathError` for links, escapes, non-files."""
    fd = _open_beneath(root, relpath, os.O_RDONLY | os.O_NONBLOCK)
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


def write_beneath(root: str, relpath: str, content: str | bytes, mode: int = 0o644) -> None:
    """Create or replace a regular file under ``root`` (parents created); refuses links and escapes."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    fd = _open_beneath(root, relpath, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK, mode=mode, make_parents=True)
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


def _open_beneath(root: str, relpath: str, flags: int, mode: int = 0o644, make_parents: bool = False) -> int:
    parts = _split_relpath(relpath)
    root = os.path.realpath(root)
    target = os.path.realpath(os.path.join(root, *parts))
    if not is_under(target, root) or target == root:
        raise UnsafePathError(f"{relpath!r} resolves outside the scratch folder")
    # The realpath check above gives a clear message; the walk below is the actual guarantee
    # (no symlink is followed at any component, even if one appears between check and open).
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            if make_parents:
                try:
                    os.mkdir(part, 0o755, dir_fd=dir_fd)
                    own(part, dir_fd=dir_fd)
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
        if not is_under(relpath, SANDBOX_HOME):
            raise UnsafePathError(f"{relpath!r} is absolute and not under {SANDBOX_HOME}")
        relpath = relpath[len(SANDBOX_HOME):]
    parts = [p for p in relpath.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise UnsafePathError(f"{relpath!r} is empty or contains '..'")
    return parts


def rmtree(path: str) -> None:
    """Remove ``path`` and everything beneath it, never following symlinks, whatever modes the code set."""

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


def rmtree_all(paths: list[str]) -> None:
    """:func:`rmtree` each path that still exists (a finalizer's target: it must never raise for a gone path)."""
    for p in paths:
        if os.path.lexists(p):
            rmtree(p)
