"""The function-calling task set (bench/function_calling): deterministic, disjoint, valid, and graded right."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from agentrft.datasets import validate_row
from agentrft.graders import load_grader

BENCH = Path(__file__).resolve().parents[1] / "bench" / "function_calling"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"fc_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


make_tasks = _load("make_tasks")
grader_source = _load("grader_source")


@pytest.fixture(scope="module")
def sets():
    return make_tasks.make_sets(seed=0)


def _call(name: str, **arguments) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def _free_values(row: dict) -> set[str]:
    """The non-enum argument values of a row's calls (what held out means)."""
    schemas = {t["function"]["name"]: t["function"]["parameters"]["properties"] for t in row["tools"]}
    calls = row.get("expected_calls") or [
        {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
        for c in row["messages"][-1]["tool_calls"]]
    return {json.dumps(v) for c in calls for k, v in c["arguments"].items() if "enum" not in schemas[c["name"]][k]}


def test_generator_is_deterministic_and_matches_the_written_data(sets, tmp_path):
    assert make_tasks.make_sets(seed=0) == sets
    assert make_tasks.make_sets(seed=1) != sets
    make_tasks.write(tmp_path, seed=0)
    for path in tmp_path.iterdir():  # the files in the repository are the generator's output
        assert (BENCH / "data" / path.name).read_bytes() == path.read_bytes(), path.name


def test_sizes_categories_and_disjointness(sets):
    assert len(sets["sft_train"]) >= 300 and len(sets["rft_train"]) >= 64
    for name in ("rft_train", "heldout"):
        counts = Counter(r["category"] for r in sets[name])
        assert set(counts) == set(make_tasks.CATEGORIES) and min(counts.values()) >= 16, (name, counts)
    prompts = [r["messages"][1]["content"] for rows in sets.values() for r in rows]
    assert len(prompts) == len(set(prompts))
    train = set().union(*(_free_values(r) for name in ("sft_train", "rft_train") for r in sets[name]))
    heldout = set().union(*(_free_values(r) for r in sets["heldout"]))
    assert heldout and not heldout & train


def test_rows_validate_and_have_openai_shapes(sets):
    for rows in sets.values():
        for row in rows:
            assert validate_row(row) == [], row["id"]
            assert 1 <= len(row["tools"]) <= 4
    for row in sets["sft_train"]:
        assert row["parallel_tool_calls"] is True
        target = row["messages"][-1]
        assert target["role"] == "assistant" and target["content"] is None
        for call in target["tool_calls"]:
            assert call["id"].startswith("call_") and call["type"] == "function"
            assert isinstance(json.loads(call["function"]["arguments"]), dict)
    for row in sets["rft_train"] + sets["heldout"]:
        assert [m["role"] for m in row["messages"]] == ["system", "user"]
        names = {t["function"]["name"] for t in row["tools"]}
        assert {c["name"] for c in row["expected_calls"]} <= names
        n_calls, n_tools = len(row["expected_calls"]), len(names)
        assert {"simple": n_calls == 1 and n_tools == 1, "multiple": n_calls == 1 and n_tools > 1,
                "parallel": n_calls > 1 and len({c["name"] for c in row["expected_calls"]}) == 1 and n_tools == 1,
                "parallel_multiple": n_calls > 1 and n_tools > 1}[row["category"]], row


def test_grade_function_partial_credit():
    item = {"expected_calls": [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}},
                               {"name": "get_stock_price", "arguments": {"symbol": "AAPL"}}]}
    grade = grader_source.grade
    exact = [_call("get_stock_price", symbol="AAPL"), _call("get_weather", unit="celsius", city="Paris")]
    assert grade({"output_tools": exact}, item) == 1.0  # order does not matter
    assert grade({"output_tools": [_call("get_weather", city=" paris", unit="Celsius"), exact[0]]}, item) == 1.0
    assert grade({"output_tools": []}, item) == 0.0
    one = grade({"output_tools": exact[:1]}, item)
    wrong_arg = grade({"output_tools": [exact[0], _call("get_weather", city="Rome", unit="celsius")]}, item)
    name_only = grade({"output_tools": [exact[0], _call("get_weather", city="Rome", unit="fahrenheit")]}, item)
    extra = grade({"output_tools": exact + [_call("get_stock_price", symbol="MSFT")]}, item)
    assert 0.5 == one < name_only < wrong_arg < 1.0
    assert 0.0 < extra < 1.0
    bad_json = {"type": "function", "function": {"name": "get_weather", "arguments": "{city: Paris"}}
    assert 0.5 < grade({"output_tools": [exact[0], bad_json]}, item) < 1.0
    assert grade({"output_tools": [_call("get_news", topic="sports", count=3)]}, item) == 0.0
    numbers = {"expected_calls": [{"name": "set_timer", "arguments": {"minutes": 5, "label": "tea"}}]}
    assert grade({"output_tools": [_call("set_timer", minutes=5.0, label="tea")]}, numbers) == 1.0
    assert grade({"output_tools": [_call("set_timer", minutes="5", label="tea")]}, numbers) < 1.0
    assert grade({"output_tools": [_call("set_timer", minutes=5, label="tea", extra=1)]}, numbers) < 1.0


def test_grader_spec_scores_through_the_python_grader(sets):
    grader = load_grader(BENCH / "data" / "grader.json")
    row = next(r for r in sets["heldout"] if len(r["expected_calls"]) >= 2)
    exact = [_call(c["name"], **c["arguments"]) for c in reversed(row["expected_calls"])]
    assert grader.grade({"output_tools": exact}, row).reward == 1.0
    partial = grader.grade({"output_tools": exact[:1]}, row)
    assert 0.0 < partial.reward < 1.0 and not partial.has_error
    assert grader.grade({"output_text": "I cannot call tools."}, row).reward == 0.0
