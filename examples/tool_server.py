"""A ready-to-run tool server in OpenAI's Agent RFT wire format (FastAPI).

Start it, then point agentrft's ``endpoint_tools`` at it::

    python examples/tool_server.py --port 8765

It serves three tools on ``POST /`` (any tool, chosen by ``name``) and on
``POST /tools/{name}`` (one URL per tool, if you prefer that layout):

* ``calculator(expression)`` — exact arithmetic on + - * / // % ** and parentheses;
* ``lookup(key)`` — a small fact table; a task row may bring its own facts
  under the reference field ``facts`` (the row arrives as ``item``);
* ``scratchpad(action, text?)`` — append to / read a note kept *per rollout*,
  keyed by ``trace_id``: the same for every call of one rollout, different
  between rollouts (this is what ``trace_id`` is for).

Wire format::

    request   {"type": "function_call", "name", "arguments": "<json string>",
               "call_id", "id", "item": <task row>, "trace_id"}
    response  {"type": "function_call_output", "call_id", "id", "output": "<string>"}

A bad call (unknown tool, bad arguments, division by zero) is answered with
HTTP 400 and a plain-text reason: agentrft shows it to the model as a tool
error. 5xx means the server itself failed: agentrft retries, then marks the
rollout as an infrastructure failure (excluded from training).
"""

from __future__ import annotations

import argparse
import ast
import json
import operator
from collections import defaultdict
from typing import Any, Callable

from fastapi import FastAPI, HTTPException
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel

FACTS = {
    "capital:france": "Paris",
    "capital:japan": "Tokyo",
    "boiling_point_water_c": "100",
    "speed_of_light_m_s": "299792458",
}

TOOL_SCHEMAS = [  # what a task row's "tools" would carry for this server
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluate an arithmetic expression exactly.",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string", "description": "e.g. '(3 + 4) * 12'"}},
                "required": ["expression"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look up a fact by key, e.g. 'capital:france'.",
            "parameters": {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "scratchpad",
            "description": "Keep notes during this task: action 'write' appends text, 'read' returns all notes.",
            "parameters": {
                "type": "object",
                "properties": {"action": {"type": "string", "enum": ["write", "read"]}, "text": {"type": "string"}},
                "required": ["action"],
            },
        },
    },
]


class FunctionCall(BaseModel):
    type: str
    name: str
    arguments: str
    call_id: str
    id: str | None = None
    item: dict[str, Any] = {}
    trace_id: str | None = None


class FunctionCallOutput(BaseModel):
    type: str = "function_call_output"
    call_id: str
    id: str | None
    output: str


class BadCall(Exception):
    """The call itself is wrong: answered with 400, shown to the model."""


_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}


def _evaluate(node: ast.AST) -> float | int:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _evaluate(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 100:
            raise BadCall("exponent too large (max 100)")
        return _BINOPS[type(node.op)](left, right)
    raise BadCall(f"unsupported expression element: {type(node).__name__}")


def calculator(args: dict[str, Any], call: FunctionCall) -> str:
    expression = args.get("expression")
    if not isinstance(expression, str) or len(expression) > 200:
        raise BadCall("'expression' must be a string of at most 200 characters")
    try:
        return str(_evaluate(ast.parse(expression, mode="eval")))
    except SyntaxError:
        raise BadCall(f"not an arithmetic expression: {expression!r}") from None
    except ZeroDivisionError:
        raise BadCall("division by zero") from None


def lookup(args: dict[str, Any], call: FunctionCall) -> str:
    key = args.get("key")
    facts = {**FACTS, **(call.item.get("facts") or {})}
    if key not in facts:
        raise BadCall(f"unknown key {key!r}; known keys: {sorted(facts)}")
    return str(facts[key])


_notes: dict[str, list[str]] = defaultdict(list)  # trace_id -> notes (a real server would expire these)


def scratchpad(args: dict[str, Any], call: FunctionCall) -> str:
    notes = _notes[call.trace_id or call.call_id]
    if args.get("action") == "write":
        notes.append(str(args.get("text", "")))
        return f"saved note {len(notes)}"
    if args.get("action") == "read":
        return "\n".join(notes) or "(no notes yet)"
    raise BadCall("'action' must be 'write' or 'read'")


TOOLS: dict[str, Callable[[dict[str, Any], FunctionCall], str]] = {
    "calculator": calculator,
    "lookup": lookup,
    "scratchpad": scratchpad,
}

app = FastAPI(title="Agent RFT example tool server")


def _handle(call: FunctionCall) -> FunctionCallOutput:
    if call.type != "function_call":
        raise HTTPException(400, f"expected type 'function_call', got {call.type!r}")
    if call.name not in TOOLS:
        raise HTTPException(400, f"unknown tool {call.name!r}; this server has {sorted(TOOLS)}")
    try:
        args = json.loads(call.arguments or "{}")
        if not isinstance(args, dict):
            raise BadCall("arguments must be a JSON object")
        output = TOOLS[call.name](args, call)
    except json.JSONDecodeError as e:
        raise HTTPException(400, f"arguments are not valid JSON: {e}") from None
    except BadCall as e:
        raise HTTPException(400, str(e)) from None
    return FunctionCallOutput(call_id=call.call_id, id=call.id, output=output)


@app.exception_handler(HTTPException)
async def _plain_text_errors(request: Any, exc: HTTPException) -> PlainTextResponse:
    return PlainTextResponse(str(exc.detail), status_code=exc.status_code)  # the text the model will see


@app.post("/")
async def call_any_tool(call: FunctionCall) -> FunctionCallOutput:
    return _handle(call)


@app.post("/tools/{name}")
async def call_named_tool(name: str, call: FunctionCall) -> FunctionCallOutput:
    if call.name != name:
        raise HTTPException(400, f"this URL serves {name!r}, the call is for {call.name!r}")
    return _handle(call)


@app.get("/schemas")
async def schemas() -> list[dict[str, Any]]:
    """The function schemas to put in your task rows' ``tools``."""
    return TOOL_SCHEMAS


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Agent RFT example tool server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
