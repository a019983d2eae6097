"""Which host processes are still alive: the check that a contained program left nothing running."""

from __future__ import annotations

import os


def pids_with(token: str) -> list[int]:
    """Host pids of the live processes (zombies count as gone) whose command line holds ``token``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if token.encode() not in f.read():
                    continue
            with open(f"/proc/{name}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(name))
        except (OSError, IndexError):
            pass
    return found
