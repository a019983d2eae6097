"""Tool calls written as bare JSON objects or arrays of them (Llama 3.x, Mistral).

Llama 3.x writes a call as the assistant's whole message, ``{"name": ...,
"parameters": {...}}`` (optionally after ``<|python_tag|>``); Mistral writes
``[TOOL_CALLS]`` and a JSON array of ``{"name", "arguments", "id"}`` objects. Both
come down to a run of JSON values separated by whitespace, ``;`` or ``,``, where
an array's elements are calls. :func:`parse_json_calls` splits such a run; each
call's raw text is then checked by the rules of a Hermes ``<tool_call>`` block
(:mod:`~agentrft.models.chat_format.hermes_tool_calls`: a non-empty name,
``arguments`` or ``parameters`` that is an object), so every family reports a
malformed call with the same messages.

Never raises: a value that is not valid JSON becomes one error (up to the next
``;`` or newline that starts another object or array) and parsing goes on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from agentrft.models.chat_format.hermes_tool_calls import _parse_call_body, _beyond_json_limits
from agentrft.types import ToolCall

__all__ = ["JsonCalls", "parse_json_calls"]

_DECODER = json.JSONDecoder()
_SEPARATORS = " \t\r\n;,"
_WHITESPACE = " \t\r\n"
_NEXT_VALUE = re.compile(r"[;\n][\s;]*(?=[\[{])")


@dataclass
class JsonCalls:
    """What :func:`parse_json_calls` found; ``errors[i]`` reads ``"tool call N: <reason>"``."""

    calls: list[ToolCall] = field(default_factory=list)
    objects: list[dict[str, Any]] = field(default_factory=list)  # the decoded JSON of each call (ids etc.)
    errors: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)
    attempts: int = 0  # calls seen, good or bad (numbers the next region's errors)
    rest: str = ""  # text after the calls that is not JSON: content, not a call


def _skip(text: str, pos: int, chars: str) -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos


def _array_items(text: str, pos: int) -> tuple[list[str], int, str | None]:
    """Raw texts of the elements of the JSON array at ``text[pos] == "["``, where it ends, and
    why it is not a well-formed array (then the end is where reading stopped)."""
    items: list[str] = []
    i = _skip(text, pos + 1, _WHITESPACE)
    if i < len(text) and text[i] == "]":
        return items, i + 1, None
    while True:
        try:
            _, end = _DECODER.raw_decode(text, i)
        except json.JSONDecodeError as e:
            return items, i, f"invalid JSON: {e.msg} at char {e.pos - pos}"
        except (ValueError, RecursionError) as e:
            return items, i, f"invalid JSON: {_beyond_json_limits(e)}"
        items.append(text[i:end])
        i = _skip(text, end, _WHITESPACE)
        if i < len(text) and text[i] == ",":
            i = _skip(text, i + 1, _WHITESPACE)
        elif i < len(text) and text[i] == "]":
            return items, i + 1, None
        else:
            return items, i, "unterminated JSON array (expected ',' or ']')"


def _value_items(text: str, pos: int) -> tuple[list[str], int, str | None]:
    """Raw call texts of the JSON value at ``pos`` (an array's elements, or the value itself)."""
    if text[pos] == "[":
        return _array_items(text, pos)
    try:
        _, end = _DECODER.raw_decode(text, pos)
    except json.JSONDecodeError as e:
        return [], pos, f"invalid JSON: {e.msg} at char {e.pos - pos}"
    except (ValueError, RecursionError) as e:
        return [], pos, f"invalid JSON: {_beyond_json_limits(e)}"
    return [text[pos:end]], end, None


def parse_json_calls(text: str, first_number: int = 1) -> JsonCalls:
    """Calls in ``text``: JSON objects, or arrays of them, separated by whitespace, ``;`` or ``,``.

    Reading stops at the first value that does not start with ``{`` or ``[``:
    that text is :attr:`JsonCalls.rest`. ``first_number`` numbers the first call
    in error messages (calls of an earlier region come first).
    """
    out = JsonCalls()
    n = first_number - 1
    pos = 0
    while True:
        pos = _skip(text, pos, _SEPARATORS)
        if pos >= len(text):
            break
        if text[pos] not in "[{":
            out.rest = text[pos:].strip()
            break
        items, end, error = _value_items(text, pos)
        for raw in items:
            n += 1
            result = _parse_call_body(raw)
            if isinstance(result, ToolCall):
                out.calls.append(result)
                out.objects.append(json.loads(raw))
            else:
                out.errors.append(f"tool call {n}: {result}")
                out.malformed.append(raw)
        if error is not None:
            n += 1
            found = _NEXT_VALUE.search(text, end)
            stop = found.start() if found else len(text)
            out.errors.append(f"tool call {n}: {error}")
            out.malformed.append(text[pos if not items else end:stop].strip())
            end = stop
        pos = end
    out.attempts = n - first_number + 1
    return out
