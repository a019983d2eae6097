"""Tools the model can call, and the environments that hold their per-rollout state.

The public surface of :mod:`agentrft.tools`:

* :func:`tool`, :func:`function_schema`, :class:`FunctionTool`,
  :class:`SchemaOnlyTool` — Python functions as tools (schema from type hints
  and docstring);
* :class:`Environment`, :class:`FunctionEnvironment` — per-rollout state whose
  public methods are tools;
* :class:`ToolExecutor`, :class:`ToolLimits` — validation, deadlines, budget
  and concurrent execution of one rollout's calls;
* :class:`Tool`, :class:`ToolContext`, :class:`ToolFailure`, :func:`run_sync` —
  the seam every kind of tool implements;
* HTTP tool endpoints (OpenAI Agent RFT wire format), MCP servers and the
  code sandbox — imported on first use, so ``import agentrft.tools`` stays
  light and does not depend on their optional parts.
"""

from __future__ import annotations

import importlib
from typing import Any

from agentrft.tools.base import Tool, ToolContext, ToolFailure, run_blocking, run_sync
from agentrft.tools.environment import Environment, FunctionEnvironment
from agentrft.tools.executor import ToolExecutor, ToolLimits
from agentrft.tools.schema import FunctionTool, SchemaOnlyTool, function_schema, tool

# name -> module, for the transports that load on first use (PEP 562).
_LAZY = {
    "EndpointToolConfig": "agentrft.tools.http_endpoint",
    "HttpEndpointTool": "agentrft.tools.http_endpoint",
    "endpoint_tools_for_row": "agentrft.tools.http_endpoint",
    "MCPServerConfig": "agentrft.tools.mcp_tools",
    "MCPToolset": "agentrft.tools.mcp_tools",
    "Sandbox": "agentrft.tools.sandbox",
    "SandboxConfig": "agentrft.tools.sandbox",
    "Guardrails": "agentrft.tools.guardrails",
    "GuardrailConfig": "agentrft.tools.guardrails",
    "PythonTool": "agentrft.tools.code_tools",
    "ShellTool": "agentrft.tools.code_tools",
}

__all__ = [
    "Environment",
    "FunctionEnvironment",
    "FunctionTool",
    "SchemaOnlyTool",
    "Tool",
    "ToolContext",
    "ToolExecutor",
    "ToolFailure",
    "ToolLimits",
    "function_schema",
    "run_blocking",
    "run_sync",
    "tool",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
