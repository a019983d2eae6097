"""Hermes-style tool calls: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks in text.

The tool-call syntax of Hermes and Qwen2.5/3 models, used by
:class:`~agentrft.models.chat_format.hermes.HermesChatFormat` and by
:class:`~agentrft.models.chat_format.template.TemplateChatFormat` (the
tool-capable templates it targets use the same blocks). Several blocks in one
turn are parallel calls, in order.

Parsing is forgiving by design: a malformed ``<tool_call>`` block never raises;
it becomes one entry of ``ParsedAssistant.parse_errors`` (shown to the model as
a tool error by the rollout loop) while the well-formed calls around it are
still executed.
"""

from __future__ import annotations

import json
from typing import Any

from agentrft.models.chat_format.base import ParsedAssistant
from agentrft.types import ToolCall

__all__ = ["TOOL_CALL_CLOSE", "TOOL_CALL_OPEN", "format_tool_call", "parse_tool_calls"]

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"


def format_tool_call(call: ToolCall) -> str:
    """The canonical Hermes text of one call (what :func:`parse_tool_calls` reads back)."""
    payload = json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{payload}\n{TOOL_CALL_CLOSE}"


_JSON_TYPE = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
              float: "a number", type(None): "null"}


def _json_type(value: Any) -> str:
    return _JSON_TYPE.get(type(value), type(value).__name__)


def _beyond_json_limits(e: ValueError | RecursionError) -> str:
    """Why ``json`` refused text its grammar allows: a number past ``int()``'s 4300 digits, or nesting
    past the recursion limit (a model can sample either; it is a malformed call, not a crash)."""
    return "nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0][:200]


def _parse_call_body(body: str) -> ToolCall | str:
    """A :class:`ToolCall`, or the reason the block is malformed."""
    text = body.strip()
    if not text:
        return "empty <tool_call> block"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return f"invalid JSON: {e.msg} at char {e.pos}"
    except (ValueError, RecursionError) as e:
        return f"invalid JSON: {_beyond_json_limits(e)}"
    if not isinstance(obj, dict):
        return f'expected a JSON object {{"name": ..., "arguments": {{...}}}}, got {_json_type(obj)}'
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return 'missing "name" (a non-empty string)' if name is None else f'"name" must be a non-empty string, got {_json_type(name)}'
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models emit the OpenAI wire form: arguments as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            return f"arguments of {name!r} is a string but not valid JSON: {e.msg} at char {e.pos}"
        except (ValueError, RecursionError) as e:
            return f"arguments of {name!r} is a string but not valid JSON: {_beyond_json_limits(e)}"
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return f"arguments of {name!r} must be a JSON object, got {_json_type(args)}"
    return ToolCall(name=name.strip(), arguments=args)


def parse_tool_calls(text: str) -> ParsedAssistant:
    """Split assistant text into content and ``<tool_call>`` blocks (in order, = parallel calls).

    Never raises: each malformed block (bad JSON, missing name, non-object
    arguments, unclosed tag) yields one ``parse_errors`` entry
    ``"tool call N: <reason>"`` where N counts all blocks from 1.
    Content is the text outside the blocks, stripped.
    """
    outside: list[str] = []
    calls: list[ToolCall] = []
    errors: list[str] = []
    malformed: list[str] = []
    pos, n = 0, 0
    while True:
        start = text.find(TOOL_CALL_OPEN, pos)
        if start < 0:
            outside.append(text[pos:])
            break
        outside.append(text[pos:start])
        n += 1
        body_start = start + len(TOOL_CALL_OPEN)
        close = text.find(TOOL_CALL_CLOSE, body_start)
        reopen = text.find(TOOL_CALL_OPEN, body_start)
        if close < 0 or 0 <= reopen < close:
            end = reopen if reopen >= 0 else len(text)
            errors.append(f"tool call {n}: unclosed {TOOL_CALL_OPEN} tag (expected {TOOL_CALL_CLOSE})")
            malformed.append(text[start:end])
            pos = end
            continue
        result = _parse_call_body(text[body_start:close])
        pos = close + len(TOOL_CALL_CLOSE)
        if isinstance(result, ToolCall):
            calls.append(result)
        else:
            errors.append(f"tool call {n}: {result}")
            malformed.append(text[start:pos])
    content = "\n".join(s.strip() for s in outside if s.strip())
    return ParsedAssistant(content=content, tool_calls=calls, parse_errors=errors, malformed=malformed)
