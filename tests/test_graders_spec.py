"""Grader specs: strict validation with field paths, versions, and OpenAI-guide fixtures run unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentrft.errors import GraderSpecError
from agentrft.graders import grader_version, load_grader, normalised_spec, parse_spec
from agentrft.graders.model_graders import JudgeConfig
from agentrft.graders.testing import ScriptedChatServer

FIXTURES = Path(__file__).parent / "fixtures" / "graders"
SC = {"type": "string_check", "name": "sc", "input": "{{sample.output_text}}", "reference": "x", "operation": "eq"}


def _error(spec) -> str:
    with pytest.raises(GraderSpecError) as e:
        load_grader(spec)
    return str(e.value)


def test_unknown_field_is_an_error_with_its_path():
    assert "<root>" not in _error({**SC, "opration": "eq"})
    assert "opration: Extra inputs are not permitted" in _error({**SC, "opration": "eq"})
    nested = {"type": "multi", "graders": {"string_check": {**SC, "bogus": 1}}, "calculate_output": "string_check"}
    # the sub-grader named like a type tag must still show up in the path
    assert "graders.string_check.bogus" in _error(nested)
    deep = {
        "type": "score_model",
        "model": "m",
        "input": [{"role": "user", "content": "hi", "extra": 1}],
        "sampling_params": {"temperature": 1, "max_tokens": 3},
    }
    msg = _error(deep)
    assert "input[0].extra" in msg and "sampling_params.max_tokens" in msg


def test_invalid_values_are_rejected():
    assert "operation" in _error({**SC, "operation": "contains"})
    assert "evaluation_metric" in _error(
        {"type": "text_similarity", "input": "a", "reference": "b", "evaluation_metric": "rouge_9"}
    )
    assert "missing 'type'" in _error({"name": "x"})
    assert "must define a top-level function grade" in _error({"type": "python", "source": "def other(): return 1"})
    assert "does not parse" in _error({"type": "python", "source": "def grade(:"})
    assert "passing_labels" in _error(
        {"type": "label_model", "model": "m", "input": [{"role": "user", "content": "x"}], "labels": ["a"], "passing_labels": ["b"]}
    )
    assert "range" in _error({"type": "score_model", "model": "m", "input": [{"role": "user", "content": "x"}], "range": [1, 0]})
    assert "budget" in _error({"type": "tool_calls", "target": 5, "budget": 5})
    assert "url" in _error({"type": "endpoint", "url": "ftp://x"})
    with pytest.raises(GraderSpecError, match="not found"):
        load_grader(FIXTURES / "nope.json")


def test_multi_formula_is_checked_at_load():
    base = {"type": "multi", "graders": {"a": SC}}
    assert "not sub-graders" in _error({**base, "calculate_output": "a + b"})
    assert "calculate_output" in _error({**base, "calculate_output": "__import__('os')"})
    assert "identifier" in _error({"type": "multi", "graders": {"a-b": SC}, "calculate_output": "1"})


def test_version_is_a_content_hash_of_the_normalised_spec():
    v = grader_version(SC)
    assert len(v) == 16 and int(v, 16) >= 0
    # key order and explicit defaults do not matter; content does
    reordered = dict(reversed(list(SC.items())))
    assert grader_version(reordered) == v
    ts = {"type": "text_similarity", "input": "a", "reference": "b", "evaluation_metric": "bleu"}
    assert grader_version(ts) == grader_version({**ts, "name": "text_similarity", "pass_threshold": None})
    assert grader_version({**SC, "reference": "y"}) != v
    py = {"type": "python", "source": "def grade(s, i):\n    return 1.0\n"}
    assert grader_version(py) != grader_version({**py, "source": py["source"].replace("1.0", "1.00")})
    assert load_grader(SC).grade("x", {}).grader_version == v
    assert normalised_spec(SC)["operation"] == "eq"


@pytest.mark.parametrize("name", ["string_check", "text_similarity", "score_model", "label_model", "python", "multi", "agent_cost_multi"])
def test_fixture_specs_validate_unchanged(name):
    raw = json.loads((FIXTURES / f"{name}.json").read_text())
    spec = parse_spec(raw)
    assert spec.type == raw["type"] and spec.name == raw["name"]


def test_fixture_cases_run_unchanged():
    for line in (FIXTURES / "cases.jsonl").read_text().splitlines():
        case = json.loads(line)
        grade = load_grader(FIXTURES / case["spec"]).grade(case["sample"], case["item"])
        assert not grade.has_error, (case, grade.error_messages)
        assert grade.reward == pytest.approx(case["expected"]), case


def test_model_fixtures_run_against_a_local_judge():
    def reply(body):
        prompt = "\n".join(m["content"] for m in body["messages"])
        if "sentiment" in prompt:
            return "positive" if "love" in prompt else "negative"
        return '{"result": 1.0}' if "Model answer: Paris" in prompt else '{"result": 0.0}'

    with ScriptedChatServer(reply) as server:
        judge = JudgeConfig(base_url=server.base_url, api_key="k", max_retries=0)
        score = load_grader(FIXTURES / "score_model.json", judge=judge)
        assert score.grade("Paris", {"reference_answer": "Paris"}).reward == 1.0
        assert score.grade("Lyon", {"reference_answer": "Paris"}).reward == 0.0
        label = load_grader(FIXTURES / "label_model.json", judge=judge)
        assert label.grade("", {"response": "I love it"}).reward == 1.0
        assert label.grade("", {"response": "I hate it"}).reward == 0.0
        body = server.requests[0]["body"]
        assert body["model"] == "o4-mini-2025-04-16"
        assert body["seed"] == 42 and body["max_completion_tokens"] == 32768 and body["reasoning_effort"] == "medium"
