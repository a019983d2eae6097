"""Peak memory of one call, for the tests that bound what a bomb (a reply, a query, a row) may cost."""

from __future__ import annotations

import resource
import time
from pathlib import Path


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise OSError(key)


def measure(fn):
    """(outcome, seconds, peak RSS growth in MB) of ``fn()``; the outcome is its result or the exception."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        base, peak = _status_mb("VmRSS"), lambda: _status_mb("VmHWM")
    except OSError:  # no /proc: the lifetime peak can only show growth past its old high
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # noqa: E731
    start = time.monotonic()
    try:
        outcome = fn()
    except Exception as e:  # noqa: BLE001 - the outcome is inspected by the test
        outcome = e
    return outcome, time.monotonic() - start, peak() - base
