"""score_model / label_model against a real local chat-completions server (openai SDK over HTTP)."""

from __future__ import annotations

import pytest

from agentrft.graders import JudgeConfig, load_grader
from agentrft.graders.model_graders import parse_label, parse_score
from agentrft.graders.testing import ScriptedChatServer

SCORE = {
    "type": "score_model",
    "name": "judge",
    "model": "spec-model",
    "input": [
        {"role": "developer", "content": "You grade answers."},
        {"role": "user", "content": [{"type": "input_text", "text": "Q: {{item.question}}"}, {"type": "input_text", "text": "A: {{sample.output_text}}"}]},
    ],
    "range": [0, 10],
    "sampling_params": {"temperature": 0.0, "seed": 7},
}
LABEL = {
    "type": "label_model",
    "name": "labeler",
    "model": "m",
    "input": [{"role": "user", "content": "Is '{{sample.output_text}}' correct?"}],
    "labels": ["correct", "incorrect", "unsure"],
    "passing_labels": ["correct"],
}


def _judge(server, **kw) -> JudgeConfig:
    return JudgeConfig(base_url=server.base_url, api_key="test-key", max_retries=0, timeout_s=5, **kw)


def test_score_model_prompt_params_and_clamping():
    replies = iter(['{"result": 7.5}', "12", "```json\n{\"score\": -3}\n```"])
    with ScriptedChatServer(lambda body: next(replies)) as server:
        grader = load_grader(SCORE, judge=_judge(server))
        assert grader.grade("Paris", {"question": "capital?"}).reward == 7.5
        assert grader.grade("x", {"question": "q"}).reward == 10.0  # clamped to range
        assert grader.grade("x", {"question": "q"}).reward == 0.0
        req = server.requests[0]
        assert req["headers"]["authorization"] == "Bearer test-key"
        body = req["body"]
        assert body["model"] == "spec-model" and body["temperature"] == 0.0 and body["seed"] == 7
        assert body["messages"][0] == {"role": "system", "content": "You grade answers."}
        assert body["messages"][1] == {"role": "user", "content": "Q: capital?\nA: Paris"}
        assert "number from 0 to 10" in body["messages"][-1]["content"]


def test_config_overrides_model_and_can_drop_format_instructions():
    with ScriptedChatServer(lambda body: "1") as server:
        grader = load_grader(SCORE, judge=_judge(server, model="local-judge", format_instructions=False))
        assert grader.grade("a", {"question": "q"}).reward == 1.0
        body = server.requests[0]["body"]
        assert body["model"] == "local-judge" and len(body["messages"]) == 2


@pytest.mark.parametrize("reply", ["I think it deserves a 9", "", '{"result": "high"}', '{"result": true}', "NaN", "[refusal] no"])
def test_unparseable_score_is_parse_error(reply):
    with ScriptedChatServer(lambda body: reply) as server:
        g = load_grader(SCORE, judge=_judge(server)).grade("a", {"question": "q"})
    assert g.reward == 0.0 and g.errors["model_grader_parse_error"] and not g.errors["model_grader_server_error"]


def test_http_failure_is_server_error():
    with ScriptedChatServer(lambda body: (500, {"error": {"message": "overloaded"}})) as server:
        g = load_grader(SCORE, judge=_judge(server)).grade("a", {"question": "q"})
        assert g.errors["model_grader_server_error"] and "overloaded" in g.error_messages[0]
        url = server.base_url
    # nothing listens there any more: a connection error
    g = load_grader(SCORE, judge=JudgeConfig(base_url=url, max_retries=0, timeout_s=2)).grade("a", {"question": "q"})
    assert g.errors["model_grader_server_error"]


def test_sdk_retries_transient_errors():
    answers = iter([(503, {"error": {"message": "busy"}}), '{"result": 4}'])
    with ScriptedChatServer(lambda body: next(answers)) as server:
        g = load_grader(SCORE, judge=JudgeConfig(base_url=server.base_url, max_retries=1)).grade("a", {"question": "q"})
    assert g.reward == 4.0 and len(server.requests) == 2


def test_label_model():
    replies = iter(["correct", '{"result": "incorrect"}', "Correct.", "correct or incorrect", "maybe"])
    with ScriptedChatServer(lambda body: next(replies)) as server:
        grader = load_grader(LABEL, judge=_judge(server))
        assert grader.grade("x", {}).reward == 1.0
        assert grader.grade("x", {}).reward == 0.0
        assert grader.grade("x", {}).reward == 1.0
        for _ in range(2):
            g = grader.grade("x", {})
            assert g.reward == 0.0 and g.errors["model_grader_parse_error"]
        assert '["correct", "incorrect", "unsure"]' in server.requests[0]["body"]["messages"][-1]["content"]


def test_judge_client_seam_accepts_any_implementation():
    class FixedJudge:
        def __init__(self):
            self.seen = []

        def complete(self, messages, model, params):
            self.seen.append(messages)
            return "unsure"

    judge = FixedJudge()
    g = load_grader(LABEL, judge=judge).grade("x", {})
    assert g.reward == 0.0 and not g.has_error and "Is 'x' correct?" in judge.seen[0][0]["content"]


def test_parsers():
    assert parse_score("0.25") == 0.25 and parse_score(" .5 ") == 0.5 and parse_score('{"score": 3}') == 3.0
    for bad in ["score: 1", "1 2", "{}", "Infinity"]:
        with pytest.raises(ValueError):
            parse_score(bad)
    assert parse_label("'neutral'", ["positive", "neutral"]) == "neutral"
    with pytest.raises(ValueError):
        parse_label("neutral-ish", ["positive", "neutral"])


def test_judge_config_from_env(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    cfg = JudgeConfig.from_env(timeout_s=3)
    assert cfg.base_url == "http://127.0.0.1:9/v1" and cfg.api_key == "k" and cfg.timeout_s == 3
