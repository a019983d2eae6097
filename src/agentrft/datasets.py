"""Task datasets as JSONL files in OpenAI's RFT dataset format: read, validate, write.

What: each line of a dataset file is one task row, a JSON object with

* ``messages`` -- a non-empty list of chat messages (roles ``system``,
  ``developer``, ``user``, ``assistant``, ``tool``; ``content`` a string or a
  list of ``{"type": "text", "text": ...}`` parts);
* optionally ``tools`` -- OpenAI function schemas
  (``{"type": "function", "function": {"name", "description", "parameters"}}``);
* any other keys -- reference fields that graders read as ``item.<key>``.

SFT and DPO files use OpenAI's fine-tuning formats unchanged (``kind`` of
:func:`load_jsonl_dataset`): *supervised* rows are task rows whose messages
include the assistant turns to imitate (``tool_calls`` too; ``weight: 0`` on an
assistant message shows it without training it); *preference* rows hold
``input`` (``messages``, ``tools``), ``preferred_output`` and
``non_preferred_output``.

:func:`load_jsonl_dataset` returns the good rows and a :class:`RowError` (file
and line) for every bad one. Why skip-and-report by default: one malformed
line in a 10,000-row file should not stop a run, but it must never vanish
silently either -- the caller prints the errors, and ``strict=True`` turns any
of them into a :class:`~agentrft.errors.DatasetError` (what OpenAI's upload
validation does). A file with no valid row at all is always an error.

Every row gets an ``id`` (``"<file stem>-<line>"`` unless it has one), so
trajectories, groups and eval results can point back at their task.
:func:`write_jsonl` writes atomically (temp file + ``os.replace``), so a
crash never leaves a half-written dataset behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrft.errors import DatasetError
from agentrft.types import TaskRow

__all__ = [
    "MESSAGE_ROLES",
    "ROW_VALIDATORS",
    "DatasetLoad",
    "RowError",
    "load_jsonl_dataset",
    "read_jsonl_objects",
    "validate_preference_row",
    "validate_row",
    "validate_supervised_row",
    "write_jsonl",
]

MESSAGE_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
MAX_ERRORS_LISTED = 50  # a DatasetError message lists at most this many rows (the count is always exact)
MAX_ROW_BYTES = 8 * 2**20
"""Longest line read as a row (8 MiB). A longer one is rejected without being held in memory whole: it is
read in bounded pieces up to its end and reported as too large."""
_READ_CHUNK = 2**20


@dataclass(frozen=True)
class RowError:
    """Why one line of a dataset file was rejected."""

    path: str
    line: int  # 1-based line number in the file
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass
class DatasetLoad:
    """The valid rows of a dataset file and the errors of the rows that were skipped."""

    rows: list[TaskRow] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)


# -- validation ------------------------------------------------------------------------


def validate_row(row: Any) -> list[str]:
    """Everything wrong with one task row (empty list: the row is valid)."""
    if not isinstance(row, dict):
        return [f"a row must be a JSON object, got {_json_type(row)}"]
    problems: list[str] = []
    if "messages" not in row:
        problems.append("missing 'messages'")
    elif not isinstance(row["messages"], list):
        problems.append(f"'messages' must be a list, got {_json_type(row['messages'])}")
    elif not row["messages"]:
        problems.append("'messages' is empty")
    else:
        for i, message in enumerate(row["messages"]):
            problems.extend(f"messages[{i}]: {p}" for p in _message_problems(message))
    if row.get("tools") is not None:
        problems.extend(_tools_problems(row["tools"]))
    if "id" in row and (isinstance(row["id"], bool) or not isinstance(row["id"], str | int)):
        problems.append(f"'id' must be a string or an integer, got {_json_type(row['id'])}")
    return problems


def validate_supervised_row(row: Any) -> list[str]:
    """Everything wrong with one row of OpenAI's supervised (SFT) format: a task row whose ``messages``
    hold the assistant turns to imitate (``tool_calls`` included), each with an optional ``weight`` of
    0 (shown, not trained) or 1; optional ``tools`` and ``parallel_tool_calls``."""
    problems = validate_row(row)
    if problems:
        return problems
    assistants = [i for i, m in enumerate(row["messages"]) if m["role"] == "assistant"]
    if not assistants:
        problems.append("no assistant message to train on (a supervised row ends with the assistant's target)")
    elif all(row["messages"][i].get("weight", 1) == 0 for i in assistants):
        problems.append("every assistant message has weight 0: nothing to train on")
    for i in assistants:
        if "weight" in row["messages"][i] and row["messages"][i]["weight"] not in (0, 1):
            problems.append(f"messages[{i}].weight must be 0 or 1, got {_short(row['messages'][i]['weight'])}")
    problems.extend(_parallel_flag_problems(row))
    return problems


def validate_preference_row(row: Any) -> list[str]:
    """Everything wrong with one row of OpenAI's preference (DPO) format: ``input`` (``messages``, optional
    ``tools``, ``parallel_tool_calls``), ``preferred_output`` and ``non_preferred_output`` (lists of
    assistant messages). The older ``{"prompt", "chosen", "rejected"}`` message lists are read too."""
    if not isinstance(row, dict):
        return [f"a row must be a JSON object, got {_json_type(row)}"]
    if {"prompt", "chosen", "rejected"} <= row.keys():
        prompt = {"messages": row["prompt"], "tools": row.get("tools")}
        outputs = (("chosen", row["chosen"]), ("rejected", row["rejected"]))
    else:
        missing = [k for k in ("input", "preferred_output", "non_preferred_output") if k not in row]
        if missing:
            return [f"missing {', '.join(repr(k) for k in missing)} (a preference row has 'input', "
                    "'preferred_output' and 'non_preferred_output')"]
        if not isinstance(row["input"], dict):
            return [f"'input' must be an object with 'messages', got {_json_type(row['input'])}"]
        prompt = row["input"]
        outputs = (("preferred_output", row["preferred_output"]), ("non_preferred_output", row["non_preferred_output"]))
    problems = [f"input: {p}" for p in validate_row(prompt)]
    problems.extend(_parallel_flag_problems(prompt))
    for name, output in outputs:
        if not isinstance(output, list) or not output:
            problems.append(f"'{name}' must be a non-empty list of assistant messages")
            continue
        if not isinstance(output[0], dict) or output[0].get("role") != "assistant":
            problems.append(f"{name}[0] must be an assistant message")
        for i, message in enumerate(output):
            problems.extend(f"{name}[{i}]: {p}" for p in _message_problems(message))
    return problems


def _parallel_flag_problems(row: dict) -> list[str]:
    flag = row.get("parallel_tool_calls")
    return [] if flag is None or isinstance(flag, bool) else [f"'parallel_tool_calls' must be true or false, got {_short(flag)}"]


ROW_VALIDATORS = {"task": validate_row, "supervised": validate_supervised_row, "preference": validate_preference_row}
"""What each kind of dataset file must hold: RFT/eval tasks, SFT demonstrations, DPO preference pairs."""


def _message_problems(message: Any) -> list[str]:
    if not isinstance(message, dict):
        return [f"a message must be an object, got {_json_type(message)}"]
    role = message.get("role")
    if role not in MESSAGE_ROLES:
        return [f"role must be one of {', '.join(sorted(MESSAGE_ROLES))}; got {role!r}"]
    problems: list[str] = []
    tool_calls = message.get("tool_calls")
    if tool_calls is not None:
        if role != "assistant":
            problems.append(f"only assistant messages may have 'tool_calls' (role {role!r})")
        else:
            problems.extend(_tool_calls_problems(tool_calls))
    content = message.get("content")
    if content is None:
        if not (role == "assistant" and tool_calls):  # an assistant turn that only calls tools
            problems.append("missing 'content'")
    elif isinstance(content, list):
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                problems.append(f"content[{j}] must be {{\"type\": \"text\", \"text\": <string>}}, got {_short(part)}")
    elif not isinstance(content, str):
        problems.append(f"'content' must be a string or a list of text parts, got {_json_type(content)}")
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        problems.append("a tool message needs a string 'tool_call_id'")
    return problems


def _tool_calls_problems(tool_calls: Any) -> list[str]:
    if not isinstance(tool_calls, list):
        return [f"'tool_calls' must be a list, got {_json_type(tool_calls)}"]
    problems: list[str] = []
    for k, call in enumerate(tool_calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            problems.append(f"tool_calls[{k}] must be {{\"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}}")
        elif not isinstance(fn.get("arguments", {}), str | dict):
            problems.append(f"tool_calls[{k}].function.arguments must be a JSON string or an object")
    return problems


def _tools_problems(tools: Any) -> list[str]:
    if not isinstance(tools, list):
        return [f"'tools' must be a list of function schemas, got {_json_type(tools)}"]
    problems: list[str] = []
    seen: set[str] = set()
    for i, schema in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(schema, dict) or schema.get("type") != "function" or not isinstance(schema.get("function"), dict):
            problems.append(f"{where} must be {{\"type\": \"function\", \"function\": {{...}}}}, got {_short(schema)}")
            continue
        fn = schema["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            problems.append(f"{where}.function.name must be a non-empty string")
        elif name in seen:
            problems.append(f"{where}: duplicate tool name {name!r}")
        else:
            seen.add(name)
        if "description" in fn and not isinstance(fn["description"], str):
            problems.append(f"{where}.function.description must be a string")
        params = fn.get("parameters")
        if params is not None:
            if not isinstance(params, dict):
                problems.append(f"{where}.function.parameters must be a JSON schema object")
            elif params.get("type", "object") != "object":
                problems.append(f"{where}.function.parameters must have type 'object', got {params.get('type')!r}")
            elif not isinstance(params.get("properties", {}), dict):
                problems.append(f"{where}.function.parameters.properties must be an object")
    return problems


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- reading -----------------------------------------------------------------------------


def _bounded_lines(handle) -> Iterator[bytes | None]:
    """The file's lines, each at most :data:`MAX_ROW_BYTES`; ``None`` for a longer one (skipped to its end)."""
    while True:
        raw = handle.readline(MAX_ROW_BYTES + 1)
        if not raw:
            return
        if len(raw) > MAX_ROW_BYTES and not raw.endswith(b"\n"):
            while True:  # the rest of the oversized line, a bounded piece at a time
                rest = handle.readline(_READ_CHUNK)
                if not rest or rest.endswith(b"\n"):
                    break
            yield None
        else:
            yield raw


def _parsed_lines(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """``(line number, parsed value, error)`` for each non-blank line; ``error`` set when it is not JSON."""
    try:
        handle = path.open("rb")
    except OSError as e:
        raise DatasetError(f"{path}: cannot open dataset file: {e.strerror or e}") from e
    with handle:
        for number, raw in enumerate(_bounded_lines(handle), start=1):
            if raw is None:
                yield number, None, f"row larger than {MAX_ROW_BYTES // 2**20} MiB (the limit of one row)"
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield number, None, f"not valid UTF-8 ({e.reason} at byte {e.start})"
                continue
            if not text.strip():
                continue
            try:
                yield number, json.loads(text), None
            except json.JSONDecodeError as e:
                yield number, None, f"invalid JSON: {e.msg} (column {e.colno})"
            except (ValueError, RecursionError) as e:  # a number past int()'s 4300 digits, nesting past the limit
                yield number, None, f"invalid JSON: {str(e).split(';')[0][:200]}"


def read_jsonl_objects(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL file (blank lines skipped); any other line raises :class:`DatasetError`.

    For files that are not task datasets (preference pairs, ...), where a bad
    line is a bad file.
    """
    path = Path(path)
    for number, value, error in _parsed_lines(path):
        if error is None and not isinstance(value, dict):
            error = f"expected a JSON object, got {_json_type(value)}"
        if error is not None:
            raise DatasetError(str(RowError(str(path), number, error)))
        yield value


def load_jsonl_dataset(path: str | os.PathLike[str], *, strict: bool = False, kind: str = "task") -> DatasetLoad:
    """Read and validate a JSONL dataset.

    Args:
        path: the ``.jsonl`` file.
        strict: raise :class:`DatasetError` listing every bad row instead of skipping them.
        kind: ``task`` (RFT/eval rows), ``supervised`` (OpenAI SFT rows) or ``preference`` (OpenAI DPO
            rows): see :data:`ROW_VALIDATORS`.

    Raises:
        DatasetError: the file cannot be read, has no valid row, or (``strict``) has any bad row.
    """
    path = Path(path)
    validate = ROW_VALIDATORS[kind]
    result = DatasetLoad()
    first_line_of_id: dict[Any, int] = {}
    for number, row, error in _parsed_lines(path):
        problems = [error] if error is not None else validate(row)
        if not problems:
            row.setdefault("id", f"{path.stem}-{number}")
            if row["id"] in first_line_of_id:
                problems = [f"duplicate id {row['id']!r} (first used on line {first_line_of_id[row['id']]})"]
            else:
                first_line_of_id[row["id"]] = number
        if problems:
            result.errors.append(RowError(str(path), number, "; ".join(problems)))
        else:
            result.rows.append(row)
    if strict and result.errors:
        raise DatasetError(_listing(f"{path}: {len(result.errors)} invalid row(s)", result.errors))
    if not result.rows:
        if not result.errors:
            raise DatasetError(f"{path}: no rows (the file is empty)")
        raise DatasetError(_listing(f"{path}: no valid rows ({len(result.errors)} invalid)", result.errors))
    return result


def _listing(headline: str, errors: list[RowError]) -> str:
    lines = [headline + ":"] + [f"  {e}" for e in errors[:MAX_ERRORS_LISTED]]
    if len(errors) > MAX_ERRORS_LISTED:
        lines.append(f"  ... and {len(errors) - MAX_ERRORS_LISTED} more")
    return "\n".join(lines)


# -- writing -----------------------------------------------------------------------------


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[Any]) -> Path:
    """Write ``rows`` as JSONL (one compact JSON value per line), atomically; returns the path.

    The rows go to a temporary file in the same folder, which then replaces
    ``path`` in one step: readers see the old file or the new one, never a part.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path
