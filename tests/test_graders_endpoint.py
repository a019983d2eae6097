"""The endpoint grader against a real local HTTP server: payload, headers, retries, timeout, rate limit."""

from __future__ import annotations

import time

import pytest

from agentrft.graders import load_grader
from agentrft.graders.testing import LocalJSONServer
from agentrft.types import Trajectory


def _spec(url: str, **kw) -> dict:
    return {"type": "endpoint", "name": "svc", "url": url + "/grade", "backoff_s": 0.01, **kw}


def test_posts_sample_item_and_trace_id_with_headers(monkeypatch):
    monkeypatch.setenv("GRADER_TOKEN", "s3cret")
    with LocalJSONServer(lambda path, body, headers: (200, {"score": 0.75})) as server:
        grader = load_grader(_spec(server.url, headers={"Authorization": "Bearer ${GRADER_TOKEN}", "X-Team": "rl"}))
        traj = Trajectory(task_id="t", messages=[{"role": "assistant", "content": "hello"}], trace_id="trace-1")
        g = grader.grade(traj, {"answer": "hello"})
    assert g.reward == 0.75 and not g.has_error
    req = server.requests[0]
    assert req["path"] == "/grade"
    assert req["headers"]["authorization"] == "Bearer s3cret" and req["headers"]["x-team"] == "rl"
    assert req["body"]["trace_id"] == "trace-1"
    assert req["body"]["sample"]["output_text"] == "hello" and req["body"]["item"] == {"answer": "hello"}


def test_retries_5xx_with_backoff_then_succeeds():
    answers = iter([(503, {"error": "busy"}), (500, "oops"), (200, {"score": 1})])
    with LocalJSONServer(lambda *a: next(answers)) as server:
        g = load_grader(_spec(server.url, max_retries=2)).grade("x", {})
    assert g.reward == 1.0 and len(server.requests) == 3


def test_gives_up_after_retries_and_does_not_retry_4xx():
    with LocalJSONServer(lambda *a: (502, "bad gateway")) as server:
        g = load_grader(_spec(server.url, max_retries=1)).grade("x", {})
        assert g.reward == 0.0 and g.errors["other_error"] and "after 2 attempt(s)" in g.error_messages[0]
        assert len(server.requests) == 2
    with LocalJSONServer(lambda *a: (403, "forbidden")) as server:
        g = load_grader(_spec(server.url, max_retries=3)).grade("x", {})
        assert g.errors["other_error"] and "HTTP 403" in g.error_messages[0] and len(server.requests) == 1


def test_timeout_is_retried_then_flagged():
    def slow(*a):
        time.sleep(0.5)
        return 200, {"score": 1}

    with LocalJSONServer(slow) as server:
        start = time.monotonic()
        g = load_grader(_spec(server.url, timeout=0.1, max_retries=1)).grade("x", {})
        assert time.monotonic() - start < 1.5
    assert g.errors["other_error"] and "timed out" in g.error_messages[0]


@pytest.mark.parametrize("answer", [{"result": 1}, {"score": "1"}, {"score": None}, "not json", {"score": float("nan")}])
def test_malformed_answers_are_flagged(answer):
    with LocalJSONServer(lambda *a: (200, answer)) as server:
        g = load_grader(_spec(server.url)).grade("x", {})
    assert g.reward == 0.0 and g.errors["other_error"]


def test_declared_range_is_enforced():
    with LocalJSONServer(lambda *a: (200, {"score": 5})) as server:
        assert load_grader(_spec(server.url)).grade("x", {}).reward == 5.0
        g = load_grader(_spec(server.url, range=[0, 1])).grade("x", {})
    assert g.reward == 0.0 and "outside the declared range" in g.error_messages[0]


def test_rate_limit_spaces_requests():
    with LocalJSONServer(lambda *a: (200, {"score": 1})) as server:
        grader = load_grader(_spec(server.url, rate_limit_per_s=10))
        for _ in range(4):
            grader.grade("x", {})
        times = [r["time"] for r in server.requests]
    assert times[-1] - times[0] >= 0.28  # 4 requests at 10/s span at least 3 intervals
