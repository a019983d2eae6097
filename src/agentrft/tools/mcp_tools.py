"""MCP servers as tools, through the official ``mcp`` SDK (2.x).

An :class:`MCPToolset` connects to one MCP server — a subprocess over stdio
(``command``/``args``/``env``) or a streamable-HTTP server (``url``/``headers``)
— once per rollout, lists its tools and exposes each as a
:class:`~agentrft.tools.base.Tool` whose OpenAI function schema is
``{name, description, parameters: inputSchema}``. Once per rollout (not once
per call, not once per run) because MCP servers are often stateful — a
browser, a shell, a database transaction — and rollouts must not see each
other's state.

Why a session-owner task: the SDK's transports and ``ClientSession`` are
anyio context managers whose task groups must be entered and exited by the
*same* task, while tool calls arrive from other tasks over many turns. So
:meth:`MCPToolset.open` starts one long-lived task on the tools background
loop (:func:`agentrft.tools.base.background_loop`) that enters the transport
and session, and keeps them open until :meth:`MCPToolset.close` asks it to
leave; calls from any task or loop are forwarded to that loop.

Failure policy (same as the HTTP endpoints):

* a tool result with ``isError`` — ``ToolFailure(TOOL_ERROR, text)``, shown to
  the model; so is a JSON-RPC error the server answers a call with (unknown
  tool, invalid params): the server is fine, the call was wrong;
* a dead session or transport (process exited, connection closed, request
  timed out) — ``ToolFailure(INFRASTRUCTURE)``: the rollout is an
  infrastructure failure, excluded from training;
* failing to start or initialise the server — :class:`MCPServerError` from
  :meth:`MCPToolset.open`, which the rollout loop records as an
  environment set-up failure.

Trust: ``egress`` (an :class:`~agentrft.trust.EgressPolicy`) vets an HTTP
server's ``url`` and ``registry`` (an :class:`~agentrft.trust.McpRegistry`)
admits a stdio server's launch when the toolset is built, before anything
connects or starts; both are trusted by default.

Requires ``mcp>=2.3`` (``MCPServer``, ``streamable_http_client`` with an
``httpx2`` client); imported lazily so the rest of agentrft works without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agentrft.errors import AgentRFTError
from agentrft.tools.base import ToolContext, ToolFailure
from agentrft.tools.http_endpoint import MAX_OUTPUT_BYTES, expand_env_vars, on_background_loop, truncate_output
from agentrft.trust import TRUSTED_EGRESS, TRUSTED_MCP_REGISTRY, EgressPolicy, McpRegistry
from agentrft.types import ToolErrorKind

__all__ = ["MCPServerConfig", "MCPServerError", "MCPTool", "MCPToolset", "mcp_result_text"]

# JSON-RPC codes the SDK uses for a dead connection / an unanswered request (mcp_types.jsonrpc).
_CONNECTION_CLOSED = -32000
_REQUEST_TIMEOUT = -32001


class MCPServerError(AgentRFTError):
    """An MCP server could not be started, connected to or initialised."""


class MCPServerConfig(BaseModel):
    """One MCP server: ``command`` (stdio subprocess) or ``url`` (streamable HTTP), not both."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    """Label used in logs and error messages."""
    command: str | None = None
    """stdio: the executable that runs the server (e.g. ``npx``, ``uvx``, ``python``)."""
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    """stdio: extra environment variables (``${VAR}`` is taken from agentrft's environment)."""
    cwd: str | None = None
    url: str | None = None
    """Streamable HTTP: the server's endpoint, e.g. ``http://127.0.0.1:8000/mcp``."""
    headers: dict[str, str] = Field(default_factory=dict)
    """HTTP: request headers (``${VAR}`` is taken from the environment)."""
    tools: list[str] | None = None
    """Only expose these tools (None = all the server lists)."""
    call_timeout_s: float = Field(60.0, gt=0)
    """A call not answered in time is an infrastructure failure."""
    startup_timeout_s: float = Field(30.0, gt=0)
    """Connect + initialise + list tools must finish within this."""
    max_output_bytes: int = Field(MAX_OUTPUT_BYTES, ge=1)

    @model_validator(mode="after")
    def _one_transport(self) -> "MCPServerConfig":
        if (self.command is None) == (self.url is None):
            raise ValueError(f"MCP server {self.name!r}: set exactly one of 'command' (stdio) or 'url' (HTTP)")
        if self.url is not None and (self.args or self.env or self.cwd):
            raise ValueError(f"MCP server {self.name!r}: args/env/cwd apply to stdio servers, not to a url")
        if self.command is not None and self.headers:
            raise ValueError(f"MCP server {self.name!r}: headers apply to HTTP servers, not to a command")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"MCP server {self.name!r}: url must start with http:// or https://")
        return self

    @property
    def transport(self) -> str:
        return "stdio" if self.command is not None else "http"

    def describe(self) -> str:
        where = " ".join([self.command or "", *self.args]) if self.command else self.url
        return f"MCP server {self.name!r} ({self.transport}: {where})"


def mcp_result_text(result: Any) -> str:
    """Flatten a ``CallToolResult``'s content blocks into the text shown to the model."""
    parts: list[str] = []
    for block in result.content:
        kind = getattr(block, "type", None)
        if kind == "text":
            parts.append(block.text)
        elif kind in ("image", "audio"):
            parts.append(f"[{kind}: {block.mime_type}, {len(block.data)} base64 characters]")
        elif kind == "resource":
            res = block.resource
            parts.append(res.text if getattr(res, "text", None) is not None else f"[resource: {res.uri}]")
        elif kind == "resource_link":
            parts.append(f"[resource link: {block.uri}]")
        else:
            parts.append(json.dumps(block.model_dump(mode="json", by_alias=True, exclude_none=True)))
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)


def _describe_exception(e: BaseException) -> str:
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:  # anyio wraps one error in a group
        e = e.exceptions[0]
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(_describe_exception(x) for x in e.exceptions)
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


class MCPTool:
    """One MCP tool as a :class:`~agentrft.tools.base.Tool`; calls go through its toolset's session."""

    has_implementation = True

    def __init__(self, toolset: "MCPToolset", name: str, description: str, input_schema: dict[str, Any]):
        self.name = name
        self.toolset = toolset
        parameters = dict(input_schema or {})
        parameters.setdefault("type", "object")
        parameters.setdefault("properties", {})
        self._schema = {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}

    def schema(self) -> dict[str, Any]:
        return self._schema

    async def acall(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        return await self.toolset.call(self.name, arguments)

    def __repr__(self) -> str:
        return f"MCPTool({self.name!r} from {self.toolset.config.name!r})"


class MCPToolset:
    """A live session with one MCP server, for one rollout.

    ``await open()`` (or ``async with``) connects and lists the tools;
    :attr:`tools` are then ready; ``await close()`` ends the session (and the
    subprocess, for stdio). Safe to use from any event loop: the session
    lives on the tools background loop.
    """

    def __init__(self, config: MCPServerConfig, *, egress: EgressPolicy = TRUSTED_EGRESS,
                 registry: McpRegistry = TRUSTED_MCP_REGISTRY):
        self.config = config
        if config.command is not None:
            registry.check_stdio(config.name, config.command, config.args, config.env, config.cwd)
        self._http_transport = None if config.url is None else egress.guard(config.url, f"MCP server {config.name!r}")
        self._tools: list[MCPTool] | None = None
        self._session: Any = None
        self._owner: asyncio.Task[None] | None = None
        self._closing: asyncio.Event | None = None
        self._ended: str | None = None  # why the session ended, when it did on its own

    @property
    def tools(self) -> list[MCPTool]:
        if self._tools is None:
            raise RuntimeError(f"{self.config.describe()} is not open: await toolset.open() first")
        return list(self._tools)

    @property
    def is_open(self) -> bool:
        return self._session is not None

    async def open(self) -> list[MCPTool]:
        """Connect, initialise and list tools; raise :class:`MCPServerError` if that fails."""
        return await on_background_loop(self._open())

    async def close(self) -> None:
        """End the session; idempotent; never raises for a server that already died."""
        await on_background_loop(self._close())

    async def __aenter__(self) -> "MCPToolset":
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def call(self, name: str, arguments: dict[str, Any]) -> str:
        """Call tool ``name``; return its text or raise :class:`ToolFailure`."""
        return await on_background_loop(self._call(name, arguments))

    # -- on the background loop ------------------------------------------------------
    async def _open(self) -> list[MCPTool]:
        if self._owner is not None:
            raise RuntimeError(f"{self.config.describe()} is already open")
        ready: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._closing = asyncio.Event()
        self._owner = asyncio.create_task(self._own_session(ready), name=f"mcp-session-{self.config.name}")
        try:
            listed = await asyncio.wait_for(asyncio.shield(ready), self.config.startup_timeout_s)
        except asyncio.TimeoutError:
            await self._close()
            raise MCPServerError(
                f"{self.config.describe()} did not start within {self.config.startup_timeout_s:g}s"
            ) from None
        except BaseException as e:
            await self._close()
            if isinstance(e, asyncio.CancelledError):
                raise
            raise MCPServerError(f"{self.config.describe()} failed to start: {_describe_exception(e)}") from e
        wanted = self.config.tools
        if wanted is not None:
            missing = sorted(set(wanted) - {t.name for t in listed})
            if missing:
                await self._close()
                raise MCPServerError(
                    f"{self.config.describe()} has no tools {missing}; it lists {sorted(t.name for t in listed)}"
                )
        self._tools = [
            MCPTool(self, t.name, t.description or "", t.input_schema)
            for t in listed
            if wanted is None or t.name in wanted
        ]
        return list(self._tools)

    async def _own_session(self, ready: asyncio.Future[list[Any]]) -> None:
        """Enter transport and session, publish the tool list, wait for close, leave — all in one task."""
        from mcp import ClientSession

        try:
            async with contextlib.AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(self._transport(stack))
                session = await stack.enter_async_context(
                    ClientSession(read, write, read_timeout_seconds=self.config.startup_timeout_s)
                )
                await session.initialize()
                listed = await self._list_tools(session)
                self._session = session
                ready.set_result(listed)
                assert self._closing is not None
                await self._closing.wait()
        except BaseException as e:
            if not ready.done():
                ready.set_exception(e if isinstance(e, Exception) else RuntimeError(_describe_exception(e)))
            else:
                self._ended = _describe_exception(e)
            if not isinstance(e, Exception):
                raise
        finally:
            self._session = None

    def _transport(self, stack: contextlib.AsyncExitStack) -> contextlib.AbstractAsyncContextManager[Any]:
        c = self.config
        if c.command is not None:
            from mcp.client.stdio import StdioServerParameters, stdio_client

            params = StdioServerParameters(
                command=c.command, args=c.args, env=expand_env_vars(c.env, c.describe()) or None, cwd=c.cwd
            )
            errlog = sys.stderr if _has_fileno(sys.stderr) else sys.__stderr__  # the subprocess needs a real fd
            return stdio_client(params, errlog=errlog)
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        http = httpx2.AsyncClient(
            headers=expand_env_vars(c.headers, c.describe()),
            timeout=httpx2.Timeout(c.startup_timeout_s, read=max(c.call_timeout_s, 300.0)),
            transport=self._http_transport,
        )
        stack.push_async_callback(http.aclose)  # registered before the transport: closed after it
        assert c.url is not None
        return streamable_http_client(c.url, http_client=http)

    @staticmethod
    async def _list_tools(session: Any) -> list[Any]:
        from mcp import types

        tools: list[Any] = []
        cursor: str | None = None
        while True:
            page = await session.list_tools(params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                return tools

    async def _call(self, name: str, arguments: dict[str, Any]) -> str:
        from mcp import MCPError

        session, owner = self._session, self._owner
        if session is None or owner is None or owner.done():
            why = f": session ended ({self._ended})" if self._ended else " (not open)"
            raise ToolFailure(ToolErrorKind.INFRASTRUCTURE, f"{self.config.describe()} is unavailable{why}")
        call = asyncio.ensure_future(
            session.call_tool(name, arguments, read_timeout_seconds=self.config.call_timeout_s)
        )
        try:
            # If the session owner dies (transport crashed), stop waiting for the call.
            await asyncio.wait({call, owner}, return_when=asyncio.FIRST_COMPLETED)
            if not call.done():
                raise ToolFailure(
                    ToolErrorKind.INFRASTRUCTURE,
                    f"{self.config.describe()} session ended during the call: {self._ended or 'closed'}",
                )
            result = call.result()
        except MCPError as e:
            if e.code in (_CONNECTION_CLOSED, _REQUEST_TIMEOUT):
                raise ToolFailure(ToolErrorKind.INFRASTRUCTURE, f"{self.config.describe()}: {e.message}") from e
            raise ToolFailure(ToolErrorKind.TOOL_ERROR, e.message) from e  # the server rejected this call
        except ToolFailure:
            raise
        except Exception as e:
            raise ToolFailure(
                ToolErrorKind.INFRASTRUCTURE, f"{self.config.describe()} transport failed: {_describe_exception(e)}"
            ) from e
        finally:
            if not call.done():
                call.cancel()
        text = truncate_output(mcp_result_text(result), self.config.max_output_bytes)
        if result.is_error:
            raise ToolFailure(ToolErrorKind.TOOL_ERROR, text or f"tool {name!r} reported an error")
        return text

    async def _close(self) -> None:
        owner, self._owner = self._owner, None
        self._tools = None
        if owner is None:
            return
        if self._closing is not None:
            self._closing.set()
        try:
            await asyncio.wait_for(owner, 10.0)
        except asyncio.TimeoutError:
            pass  # wait_for cancelled it; the transports kill their subprocess on cancellation
        except Exception:
            pass  # a session that died on its own: already recorded in self._ended


def _has_fileno(stream: Any) -> bool:
    try:
        stream.fileno()
        return True
    except Exception:
        return False

