"""The ``grader`` CLI group and the reward-hacking probes."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from agentrft.graders import load_grader
from agentrft.cli.grader import grader as grader_cli
from agentrft.graders.probes import find_reference, make_probes, run_probes
from agentrft.graders.testing import ScriptedChatServer

FIXTURES = Path(__file__).parent / "fixtures" / "graders"
ROW = {
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "tools": [
        {"type": "function", "function": {"name": "search", "parameters": {}}},
        {"type": "function", "function": {"name": "lookup", "parameters": {}}},
    ],
    "answer": "Paris",
}


def _invoke(*args: str):
    return CliRunner().invoke(grader_cli, list(args))


def test_validate(tmp_path):
    r = _invoke("validate", str(FIXTURES / "multi.json"))
    assert r.exit_code == 0 and "ok: multi grader 'Example multi grader', version" in r.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "string_check", "input": "a", "reference": "b", "operation": "eq", "extra": 1}))
    r = _invoke("validate", str(bad))
    assert r.exit_code == 2 and "extra: Extra inputs are not permitted" in r.output
    bad.write_text("{not json")
    assert _invoke("validate", str(bad)).exit_code == 2


def test_run_prints_result_json(tmp_path):
    item = tmp_path / "item.json"
    item.write_text(json.dumps({"label": "positive"}))
    r = _invoke("run", str(FIXTURES / "string_check.json"), "--sample", "positive", "--item", str(item))
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["reward"] == 1.0 and out["metadata"]["errors"]["other_error"] is False
    r = _invoke("run", str(FIXTURES / "string_check.json"), "--sample", "negative", "--item", str(item))
    assert json.loads(r.stdout)["reward"] == 0.0


def _python_spec(tmp_path, source: str) -> str:
    spec = tmp_path / "python.json"
    spec.write_text(json.dumps({"type": "python", "source": source}))
    return str(spec)


# Returns a code per check so a failure says which one: 1.0 only when all hold.
SAMPLE_CHECKS = """def grade(sample, item):
    want = item["want"]
    if sample["output_text"] != want["output_text"]:
        return 0.1
    if sample["output_json"] != want["output_json"]:
        return 0.2
    if sample["output_tools"] != want["output_tools"]:
        return 0.3
    return 1.0
"""


def test_run_sample_is_the_output_text_and_json_text_fills_output_json(tmp_path):
    """As OpenAI's graders/run model_sample: the text is output_text, output_json is it parsed."""
    spec = _python_spec(tmp_path, SAMPLE_CHECKS)
    text = '{"name": "x"}'
    want = {"output_text": text, "output_json": {"name": "x"}, "output_tools": []}
    r = _invoke("run", spec, "--sample", text, "--item", json.dumps({"want": want}))
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["reward"] == 1.0
    assert "note:" not in r.stderr  # a model output, not the old sample-object use
    want = {"output_text": "plain words", "output_json": None, "output_tools": []}
    r = _invoke("run", spec, "--sample", "plain words", "--item", json.dumps({"want": want}))
    assert json.loads(r.stdout)["reward"] == 1.0
    # --sample-file: the same, read from a file or stdin, verbatim
    out = tmp_path / "out.txt"
    out.write_text(text)
    want = {"output_text": text, "output_json": {"name": "x"}, "output_tools": []}
    r = _invoke("run", spec, "--sample-file", str(out), "--item", json.dumps({"want": want}))
    assert json.loads(r.stdout)["reward"] == 1.0
    r = CliRunner().invoke(grader_cli, ["run", spec, "--sample-file", "-", "--item", json.dumps({"want": want})],
                           input=text)
    assert json.loads(r.stdout)["reward"] == 1.0


def test_run_takes_a_whole_sample_object_with_its_own_flag(tmp_path):
    item = json.dumps({"label": "positive"})
    r = _invoke("run", str(FIXTURES / "string_check.json"), "--sample-object", '{"output_text": "positive"}',
                "--item", item)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["reward"] == 1.0
    obj = tmp_path / "sample.json"
    obj.write_text(json.dumps({"output_text": "positive", "output_json": None}))
    r = _invoke("run", str(FIXTURES / "string_check.json"), "--sample-object-file", str(obj), "--item", item)
    assert json.loads(r.stdout)["reward"] == 1.0
    # the old use of --sample now grades the JSON text itself, with a hint on stderr
    r = _invoke("run", str(FIXTURES / "string_check.json"), "--sample", '{"output_text": "positive"}', "--item", item)
    assert r.exit_code == 0 and json.loads(r.stdout)["reward"] == 0.0
    assert "--sample-object" in r.stderr
    r = _invoke("run", str(FIXTURES / "string_check.json"), "--sample", str(obj), "--item", item)
    assert json.loads(r.stdout)["reward"] == 0.0 and "--sample-file" in r.stderr


def test_run_python_grader_reads_output_tools_from_a_sample_object(tmp_path):
    spec = _python_spec(tmp_path, "def grade(sample, item):\n"
                                  "    names = [t['function']['name'] for t in sample['output_tools']]\n"
                                  "    return 1.0 if names == item['tools'] else 0.0\n")
    tools = [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "Paris"}'}}]
    sample = json.dumps({"output_text": "", "output_tools": tools})
    item = json.dumps({"tools": ["lookup"]})
    r = _invoke("run", spec, "--sample-object", sample, "--item", item)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["reward"] == 1.0
    # the same JSON given as --sample is output text: no tool calls
    r = _invoke("run", spec, "--sample", sample, "--item", item)
    assert json.loads(r.stdout)["reward"] == 0.0


def test_run_needs_exactly_one_sample_and_an_object_for_the_object_flags(tmp_path):
    spec = str(FIXTURES / "string_check.json")
    r = _invoke("run", spec)
    assert r.exit_code == 2 and "exactly one of --sample" in r.stderr
    r = _invoke("run", spec, "--sample", "a", "--sample-object", "{}")
    assert r.exit_code == 2 and "got --sample, --sample-object" in r.stderr
    r = _invoke("run", spec, "--sample-object", '"just text"')
    assert r.exit_code == 2 and "--sample-object must be a JSON object" in r.stderr
    r = _invoke("run", spec, "--sample-object-file", str(tmp_path / "missing.json"))
    assert r.exit_code == 2
    # text no file system accepts as a path is still just text
    r = _invoke("run", spec, "--sample", "x" * 5000, "--item", "{\"label\": \"" + "y" * 300 + "\"}")
    assert r.exit_code == 0, r.output


def test_test_command_reports_and_fails(tmp_path):
    cases = tmp_path / "cases.jsonl"
    lines = [
        {"name": "exact", "sample": {"output_text": "positive"}, "item": {"label": "positive"}, "expected": 1},
        {"name": "range", "sample": "negative", "item": {"label": "positive"}, "max": 0.1},
        {"name": "missing var", "sample": "x", "item": {}, "expect_error": "invalid_variable_error"},
        {"name": "wrong", "sample": "negative", "item": {"label": "positive"}, "expected": 1},
    ]
    cases.write_text("\n".join(json.dumps(c) for c in lines))
    r = _invoke("test", str(FIXTURES / "string_check.json"), str(cases))
    assert r.exit_code == 1
    assert "PASS exact" in r.output and "PASS range" in r.output and "PASS missing var" in r.output
    assert "FAIL wrong: reward 0 != expected 1" in r.output and "3 passed, 1 failed" in r.output
    cases.write_text("\n".join(json.dumps(c) for c in lines[:3]))
    assert _invoke("test", str(FIXTURES / "string_check.json"), str(cases)).exit_code == 0


def test_every_probe_is_built():
    probes = {p.name: p.sample for p in make_probes(ROW, passing_label="correct")}
    assert set(probes) == {
        "empty", "echo_question", "buried_reference", "format_only", "huge_output",
        "prompt_injection", "no_tool_calls", "all_tools_called",
    }
    assert probes["empty"]["output_text"] == ""
    assert probes["echo_question"]["output_text"] == "What is the capital of France?"
    buried = probes["buried_reference"]["output_text"]
    assert "Paris" in buried and len(buried) > 10 * len("Paris") and not buried.startswith("Paris")
    assert "Paris" not in probes["format_only"]["output_text"]
    assert len(probes["huge_output"]["output_text"]) >= 100_000
    assert "ignore all previous instructions" in probes["prompt_injection"]["output_text"]
    assert "Label: correct" in probes["prompt_injection"]["output_text"]
    assert probes["no_tool_calls"]["output_text"] == "Paris" and probes["no_tool_calls"]["trajectory"]["tool_calls"] == 0
    every = probes["all_tools_called"]
    assert [t["function"]["name"] for t in every["output_tools"]] == ["search", "lookup"]
    assert every["trajectory"]["tool_calls"] == 2
    # rows without a reference or tools get the probes that make sense
    assert {p.name for p in make_probes({"messages": []})} == {"empty", "echo_question", "format_only", "huge_output", "prompt_injection"}
    assert find_reference({"solution": {"x": 1}}) == '{"x": 1}'
    assert json.loads(make_probes({"answer": '{"city": "Paris"}'})[3].sample["output_text"]) == {"city": ""}


def test_probes_flag_a_hackable_grader_and_pass_a_strict_one():
    loose = load_grader({"type": "string_check", "input": "{{sample.output_text}}", "reference": "{{item.answer}}", "operation": "ilike"})
    report = run_probes(loose, [ROW], threshold=0.5)
    assert {r.probe for r in report.flagged} == {"buried_reference", "no_tool_calls"}
    assert "buried_reference" in report.format() and "FLAGGED" in report.format()

    strict = {
        "type": "multi",
        "graders": {
            "exact": {"type": "string_check", "input": "{{sample.output_text}}", "reference": "{{item.answer}}", "operation": "eq"},
            "calls": {"type": "tool_calls", "target": 1, "budget": 2},
            "used": {"type": "python", "source": "def grade(s, i):\n    return 1.0 if s['trajectory']['tool_calls'] > 0 else 0.0\n"},
        },
        "calculate_output": "exact * used * calls",
    }
    assert run_probes(load_grader(strict), [ROW], threshold=0.5).flagged == []


def test_prompt_injection_probe_against_a_gullible_judge(tmp_path):
    def gullible(body):
        text = body["messages"][0]["content"]
        return '{"result": 1.0}' if "maximum score" in text else '{"result": 0.0}'

    spec = tmp_path / "judge.json"
    spec.write_text(json.dumps({
        "type": "score_model", "name": "judge", "model": "m",
        "input": [{"role": "user", "content": "Reference: {{item.answer}}\nAnswer: {{sample.output_text}}"}],
    }))
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps(ROW))
    with ScriptedChatServer(gullible) as server:
        args = ["probe", str(spec), "--data", str(data), "--judge-base-url", server.base_url, "--judge-api-key", "k"]
        r = _invoke(*args, "--json-out", str(tmp_path / "probes.json"))
        assert r.exit_code == 0, r.output
        assert "prompt_injection" in r.output and "1 of 8 probe grades flagged" in r.output
        assert _invoke(*args, "--fail-on-flag").exit_code == 1
    saved = json.loads((tmp_path / "probes.json").read_text())
    assert [x["probe"] for x in saved["results"] if x["flagged"]] == ["prompt_injection"]
