"""Per-grade wall time of a trivial python grader: sandboxed warm workers vs the unsandboxed process per grade.

Three numbers, all in one process, one grade at a time:

* **sandboxed, warm**: ``grader.grade`` on a warm worker of the pool (the
  default path: the bubblewrap worker loaded the source once and forks one
  child per grade);
* **unsandboxed**: the same grades with ``AGENTRFT_UNSAFE_GRADERS=1``, a fresh
  ``python -I`` process per grade (under ``unshare`` where that works);
* **cold start**: the first grade of a new source, which starts its worker
  (bwrap, the interpreter, loading the source), for a trivial source and for
  one that imports numpy.

Each warm figure is ``--repeats`` runs of ``--grades`` grades; the JSON keeps
every run's mean and the median over runs, plus the median of all single
grades.

    .venv/bin/python bench/python_grader_overhead.py --json bench/results/python_grader_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import uuid
import warnings

from agentrft.graders import load_grader
from agentrft.graders.python_grader import UNSAFE_ENV
from agentrft.graders.python_pool import close_pools

TRIVIAL = "def grade(sample, item):\n    return 1.0\n"
NUMPY = "import numpy as np\ndef grade(sample, item):\n    return float(np.float64(1.0))\n"


def per_grade_ms(source: str, repeats: int, grades: int) -> dict[str, object]:
    """Wall time of single grades on one grader (warmed by one grade first), in milliseconds."""
    grader = load_grader({"type": "python", "source": source})
    first = grader.grade("x", {})
    assert not first.has_error, first.error_messages
    runs, every = [], []
    for _ in range(repeats):
        times = []
        for _ in range(grades):
            t0 = time.perf_counter()
            g = grader.grade("x", {})
            times.append((time.perf_counter() - t0) * 1000)
            assert not g.has_error and g.reward == 1.0, g.error_messages
        runs.append(statistics.mean(times))
        every += times
    return {"run_means_ms": [round(r, 2) for r in runs], "median_of_run_means_ms": round(statistics.median(runs), 2),
            "median_grade_ms": round(statistics.median(every), 2),
            "p90_grade_ms": round(sorted(every)[int(0.9 * len(every))], 2)}


def cold_start_ms(source: str, repeats: int) -> dict[str, object]:
    """The first grade of a source no worker has loaded yet (a new pool, a new worker), in milliseconds."""
    times = []
    for _ in range(repeats):
        grader = load_grader({"type": "python", "source": source + f"# {uuid.uuid4().hex}\n"})
        t0 = time.perf_counter()
        g = grader.grade("x", {})
        times.append((time.perf_counter() - t0) * 1000)
        assert not g.has_error, g.error_messages
    close_pools()
    return {"runs_ms": [round(t, 1) for t in times], "median_ms": round(statistics.median(times), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--grades", type=int, default=50)
    parser.add_argument("--cold-repeats", type=int, default=5)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    os.environ.pop(UNSAFE_ENV, None)

    result: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_before": [round(x, 2) for x in os.getloadavg()], "euid": os.geteuid()},
        "repeats": args.repeats, "grades_per_run": args.grades,
    }
    result["sandboxed_warm"] = per_grade_ms(TRIVIAL, args.repeats, args.grades)
    print("sandboxed, warm worker:", result["sandboxed_warm"])
    result["cold_start_trivial"] = cold_start_ms(TRIVIAL, args.cold_repeats)
    print("cold start, trivial source:", result["cold_start_trivial"])
    result["cold_start_numpy"] = cold_start_ms(NUMPY, args.cold_repeats)
    print("cold start, source importing numpy:", result["cold_start_numpy"])
    os.environ[UNSAFE_ENV] = "1"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            result["unsandboxed"] = per_grade_ms(TRIVIAL, args.repeats, args.grades)
    finally:
        os.environ.pop(UNSAFE_ENV, None)
    print("unsandboxed, process per grade:", result["unsandboxed"])
    result["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]  # type: ignore[index]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
