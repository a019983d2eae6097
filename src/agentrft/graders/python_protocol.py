"""What the python grader's host and its grading processes agree on: one result per grade, checked twice.

A grade is computed in a child process that calls the user's ``grade`` and
writes exactly one message -- ``{"status", "value" | "detail", "nonce"}`` --
to a private pipe. Its parent (the *supervisor*, which waits for it) checks
that message (one line, well formed, carrying the grade's nonce, then a
clean exit) and writes one *report* to the host. The host turns the report
into a score or a :class:`~agentrft.graders.base.GradingFailure`
(:func:`report_value`).

Two supervisors use this protocol: the sandboxed worker of
:mod:`agentrft.graders.python_sandbox` (one warm process per grader source,
one child per grade) and the unsandboxed one-process-per-grade runner of
:mod:`agentrft.graders.python_grader`. Their in-process halves are Python
source (:data:`PROTOCOL_CODE`) because the supervisors run as ``python -I -c``
programs that cannot import agentrft; both prepend the same text.

Statuses of a report: ``ok`` (with ``value``), ``error`` (grade raised),
``invalid`` (grade returned a non-number), ``exited`` / ``signal`` (the child
ended without a message), ``timeout``, ``protocol`` (anything on the pipe but
one well-formed message of this grade).
"""

from __future__ import annotations

import signal
from typing import Any

from agentrft.graders.base import PYTHON_GRADER_RUNTIME_ERROR, GradingFailure

__all__ = ["CLEAN_STATUSES", "PROTOCOL_CODE", "report_value", "status_text"]

CLEAN_STATUSES = frozenset({"ok", "error", "invalid"})
"""Reports after which the child ended by itself, having written its one message."""

# The in-process half. Expects the program to set the global NONCE before check() or report_to() run.
PROTOCOL_CODE = r"""
import json, os, resource, select, signal, sys, time, traceback
MAX_MESSAGE = 1 << 20
NONCE = None


def load(source):
    # Run the grader's source; its grade function.
    namespace = {"__name__": "grader"}
    exec(compile(source, "<grader>", "exec"), namespace)
    return namespace["grade"]


def result_message(call):
    # The message for the value of call(): a number, or why there is none.
    try:
        value = call()
        if isinstance(value, (bool, int, float)):
            return {"status": "ok", "value": float(value)}
        return {"status": "invalid", "detail": type(value).__name__ + ": " + repr(value)[:200]}
    except BaseException as e:
        return {"status": "error", "detail": "".join(traceback.format_exception(e))[-4000:]}


def report_to(channel, out):
    out["nonce"] = NONCE
    os.write(channel, (json.dumps(out) + "\n").encode())
    for stream in (sys.stdout, sys.stderr):
        stream.flush()


def check(data):
    # The child's pipe must hold exactly one message line, from this grade, of a known shape.
    if not data:
        return {"status": "exited", "code": 0}
    if data.count(b"\n") != 1 or not data.endswith(b"\n"):
        return {"status": "protocol", "detail": "%d line(s) of %d bytes on the result channel, not one message"
                % (data.count(b"\n") + (not data.endswith(b"\n")), len(data))}
    try:
        message = json.loads(data)
    except ValueError:
        return {"status": "protocol", "detail": "the result channel held something other than a message"}
    if not isinstance(message, dict) or message.get("nonce") != NONCE:
        return {"status": "protocol", "detail": "the message on the result channel is not this run's"}
    status = message.get("status")
    if status == "ok" and type(message.get("value")) in (int, float) and set(message) == {"status", "value", "nonce"}:
        return {"status": "ok", "value": message["value"]}
    if status in ("invalid", "error") and isinstance(message.get("detail"), str) and len(message) == 3:
        return {"status": status, "detail": message["detail"]}
    return {"status": "protocol", "detail": "malformed message on the result channel"}


def wait_child(pid, read_end, timeout_s):
    # Read the child's pipe until it exits (or timeout_s passes: None waits for ever); the report of the grade.
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    data, timed_out, overflow, exited = bytearray(), False, False, False
    poller = select.poll()
    poller.register(read_end, select.POLLIN)
    try:
        exit_fd = os.pidfd_open(pid)
        poller.register(exit_fd, select.POLLIN)
    except (AttributeError, OSError):  # kernel before 5.3: poll the exit
        exit_fd = None
    while not exited:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            timed_out = True
            os.kill(pid, signal.SIGKILL)
            break
        wait = left if exit_fd is not None else min(left if left is not None else 0.05, 0.05)
        events = poller.poll(None if wait is None else wait * 1000)
        for fd, _ in events:
            if fd == read_end:
                chunk = os.read(read_end, 65536)
                if not chunk:
                    poller.unregister(read_end)
                data += chunk
            elif fd == exit_fd:
                exited = True
        if len(data) > MAX_MESSAGE:
            overflow = True
            os.kill(pid, signal.SIGKILL)
            break
        if exit_fd is None and os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            exited = True
    _, status = os.waitpid(pid, 0)
    if exit_fd is not None:
        os.close(exit_fd)
    os.set_blocking(read_end, False)
    try:
        while len(data) <= MAX_MESSAGE:
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            data += chunk
    except BlockingIOError:  # a leftover still holds the pipe: what it wrote so far counts
        pass
    if timed_out:
        return {"status": "timeout"}
    if overflow or len(data) > MAX_MESSAGE:
        return {"status": "protocol", "detail": "more than %d bytes on the result channel" % MAX_MESSAGE}
    if os.WIFSIGNALED(status):
        return {"status": "signal", "signal": os.WTERMSIG(status)}
    if os.WEXITSTATUS(status) != 0:
        return {"status": "exited", "code": os.WEXITSTATUS(status)}
    return check(bytes(data))
"""


def report_value(report: dict[str, Any], stderr: str, timeout_s: float) -> float:
    """The score a supervisor's report stands for; :class:`GradingFailure` for every other status."""
    status, detail = report.get("status"), report.get("detail")
    if status == "ok":
        value = report.get("value")
        if type(value) not in (int, float):
            raise GradingFailure(PYTHON_GRADER_RUNTIME_ERROR, f"python grader reported a non-number: {value!r:.80}")
        return float(value)
    if status == "error":
        raise GradingFailure(PYTHON_GRADER_RUNTIME_ERROR, f"grade() raised: {detail}")
    if status == "invalid":
        raise GradingFailure(PYTHON_GRADER_RUNTIME_ERROR, f"grade() must return a number, got {detail}")
    if status == "timeout":
        raise GradingFailure(PYTHON_GRADER_RUNTIME_ERROR,
                             f"python grader timed out after {timeout_s}s (every process it started was killed)")
    if status == "signal":
        raise GradingFailure(PYTHON_GRADER_RUNTIME_ERROR,
                             f"python grader {status_text(-int(report.get('signal', 0)))}. {stderr}".strip())
    if status == "exited":
        raise GradingFailure(PYTHON_GRADER_RUNTIME_ERROR,
                             f"python grader exited {report.get('code')} without a result. {stderr}".strip())
    raise GradingFailure(PYTHON_GRADER_RUNTIME_ERROR, f"python grader broke the result protocol: {detail}")


def status_text(returncode: int) -> str:
    """``exit N`` or ``killed by SIGNAME (why)`` for a :class:`subprocess.Popen`-style return code."""
    if returncode >= 0:
        return f"exit {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        return f"killed by signal {-returncode}"
    why = {"SIGXCPU": " (CPU time limit)", "SIGKILL": " (killed, e.g. CPU or memory limit)"}.get(name, "")
    return f"killed by {name}{why}"
