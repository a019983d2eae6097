"""JSONL task datasets: validation, skip-and-report vs strict loading, ids, atomic writing."""

from __future__ import annotations

import json
import os

import pytest

from agentrft.datasets import DatasetLoad, RowError, load_jsonl_dataset, read_jsonl_objects, validate_row, write_jsonl
from agentrft.errors import DatasetError

USER = {"role": "user", "content": "What is 2+2?"}
SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    },
}


def write_lines(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def row(**extra) -> str:
    return json.dumps({"messages": [USER], **extra})


# -- validate_row ---------------------------------------------------------------------


def test_valid_rows_have_no_problems():
    assert validate_row({"messages": [USER]}) == []
    full = {
        "id": 7,
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "system", "content": [{"type": "text", "text": "Use tools."}]},
            USER,
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "search", "arguments": "{\"query\": \"x\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "result"},
            {"role": "assistant", "content": "4"},
        ],
        "tools": [SEARCH_TOOL, {"type": "function", "function": {"name": "noargs"}}],
        "answer": 4,
        "nested": {"anything": ["goes"]},
    }
    assert validate_row(full) == []
    assert validate_row({"messages": [USER], "tools": None}) == []  # null tools = no tools


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ([1, 2], "must be a JSON object, got an array"),
        ({"prompt": "hi"}, "missing 'messages'"),
        ({"messages": []}, "'messages' is empty"),
        ({"messages": "hi"}, "'messages' must be a list, got a string"),
        ({"messages": ["hi"]}, "messages[0]: a message must be an object"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0]: role must be one of"),
        ({"messages": [{"content": "x"}]}, "role must be one of"),
        ({"messages": [{"role": "user"}]}, "messages[0]: missing 'content'"),
        ({"messages": [{"role": "user", "content": 42}]}, "'content' must be a string or a list of text parts"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "u"}]}]}, "content[0] must be"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "content[0] must be"),
        ({"messages": [USER, {"role": "tool", "content": "r"}]}, "messages[1]: a tool message needs a string 'tool_call_id'"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "only assistant messages may have 'tool_calls'"),
        ({"messages": [{"role": "assistant", "content": None, "tool_calls": [{"type": "function"}]}]}, "tool_calls[0] must be"),
        ({"messages": [USER], "tools": {"type": "function"}}, "'tools' must be a list of function schemas"),
        ({"messages": [USER], "tools": [{"name": "search"}]}, "tools[0] must be {\"type\": \"function\""),
        ({"messages": [USER], "tools": [{"type": "function", "function": {"description": "d"}}]}, "tools[0].function.name"),
        ({"messages": [USER], "tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}, "parameters must be a JSON schema object"),
        ({"messages": [USER], "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]}, "must have type 'object'"),
        ({"messages": [USER], "tools": [SEARCH_TOOL, SEARCH_TOOL]}, "tools[1]: duplicate tool name 'search'"),
        ({"messages": [USER], "id": ["x"]}, "'id' must be a string or an integer"),
    ],
)
def test_invalid_rows_are_explained(bad, fragment):
    problems = validate_row(bad)
    assert problems, bad
    assert any(fragment in p for p in problems), problems


def test_every_problem_of_a_row_is_reported():
    problems = validate_row({"messages": [{"role": "bot", "content": "x"}, {"role": "user"}], "tools": "nope"})
    assert len(problems) == 3


# -- load_jsonl_dataset ------------------------------------------------------------------


def test_load_keeps_good_rows_and_reports_bad_ones_with_line(tmp_path):
    path = write_lines(tmp_path / "tasks.jsonl", [
        row(answer=1),                       # 1 ok
        "",                                  # 2 blank: ignored
        "{not json",                         # 3
        "[1, 2]",                            # 4
        json.dumps({"messages": []}),        # 5
        row(id="keep-me", answer=2),         # 6 ok, keeps its id
        "   ",                               # 7 blank
        row(tools=[{"name": "search"}]),     # 8 malformed tools
        row(answer=3),                       # 9 ok
    ])
    loaded = load_jsonl_dataset(path)
    assert isinstance(loaded, DatasetLoad)
    assert [r["id"] for r in loaded.rows] == ["tasks-1", "keep-me", "tasks-9"]
    assert [r["answer"] for r in loaded.rows] == [1, 2, 3]  # reference fields pass through
    assert [(e.path, e.line) for e in loaded.errors] == [(str(path), 3), (str(path), 4), (str(path), 5), (str(path), 8)]
    assert "invalid JSON" in loaded.errors[0].message
    assert "JSON object" in loaded.errors[1].message
    assert "'messages' is empty" in loaded.errors[2].message
    assert "tools[0]" in loaded.errors[3].message
    assert str(loaded.errors[0]).startswith(f"{path}:3: invalid JSON")


def test_strict_lists_every_bad_row(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [row(), "oops", row(), json.dumps({"messages": [{"role": "x", "content": ""}]})])
    with pytest.raises(DatasetError) as info:
        load_jsonl_dataset(path, strict=True)
    text = str(info.value)
    assert "2 invalid row(s)" in text
    assert f"{path}:2: invalid JSON" in text
    assert f"{path}:4: messages[0]: role must be one of" in text
    assert len(load_jsonl_dataset(path).rows) == 2  # the same file loads leniently


def test_no_valid_rows_is_an_error(tmp_path):
    bad = write_lines(tmp_path / "bad.jsonl", ["{}", "[]"])
    with pytest.raises(DatasetError, match="no valid rows"):
        load_jsonl_dataset(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="empty"):
        load_jsonl_dataset(empty)
    with pytest.raises(DatasetError, match="cannot open"):
        load_jsonl_dataset(tmp_path / "missing.jsonl")


def test_duplicate_ids_and_bad_utf8_are_row_errors(tmp_path):
    path = tmp_path / "dups.jsonl"
    path.write_bytes(b"\n".join([row(id="a").encode(), row(id="a").encode(), b'{"messages": "\xff"}', row().encode()]) + b"\n")
    loaded = load_jsonl_dataset(path)
    assert [r["id"] for r in loaded.rows] == ["a", "dups-4"]
    assert [e.line for e in loaded.errors] == [2, 3]
    assert "duplicate id 'a' (first used on line 1)" in loaded.errors[0].message
    assert "UTF-8" in loaded.errors[1].message


def test_row_error_str():
    assert str(RowError("f.jsonl", 3, "boom")) == "f.jsonl:3: boom"


# -- writing and plain JSONL -------------------------------------------------------------------


def test_write_jsonl_round_trips_and_replaces_atomically(tmp_path):
    rows = [{"id": "r1", "messages": [{"role": "user", "content": "Grüße, 1 + 1?"}], "answer": 2.5}]
    path = write_jsonl(tmp_path / "sub" / "out.jsonl", rows)
    assert path.read_text(encoding="utf-8").count("\n") == 1
    assert "Grüße" in path.read_text(encoding="utf-8")  # UTF-8, not \u escapes
    assert load_jsonl_dataset(path).rows == rows

    write_jsonl(path, [{"id": "r2", "messages": [USER]}])  # overwrite
    assert [r["id"] for r in load_jsonl_dataset(path).rows] == ["r2"]
    assert os.listdir(path.parent) == ["out.jsonl"]  # no temp file left behind


def test_failed_write_keeps_the_old_file(tmp_path):
    path = write_jsonl(tmp_path / "out.jsonl", [{"messages": [USER]}])
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_jsonl(path, [{"messages": [USER]}, {"bad": object()}])  # not JSON-serialisable mid-way
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["out.jsonl"]


def test_read_jsonl_objects(tmp_path):
    good = write_lines(tmp_path / "pairs.jsonl", ['{"a": 1}', "", '{"b": 2}'])
    assert list(read_jsonl_objects(good)) == [{"a": 1}, {"b": 2}]
    bad = write_lines(tmp_path / "bad.jsonl", ['{"a": 1}', "3"])
    with pytest.raises(DatasetError, match=r"bad.jsonl:2: expected a JSON object, got a number"):
        list(read_jsonl_objects(bad))
