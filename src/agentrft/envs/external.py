"""Bring your own: a task file, tool servers and a grader spec, with no Python to write.

This is the path for users arriving from OpenAI's hosted RFT: their dataset
(OpenAI RFT JSONL, tool schemas in each row's ``tools``), their Agent RFT tool
endpoints and MCP servers, and their grader JSON, all used unchanged::

    # tools.yaml
    endpoints:
      - {name: lookup_order, server_url: "http://127.0.0.1:8765/", headers: {Authorization: "Bearer ${TOOLS_TOKEN}"}}
    mcp_servers:
      - {name: docs, command: python, args: [docs_server.py]}

    agentrft eval --data tasks.jsonl --tools tools.yaml --grader grader.json --out out/

Endpoint tools take their schemas from the row (matched by name); MCP tools
bring their own; row tools that nothing implements are schema-only (the
episode ends at the call: OpenAI's function-calling mode). Without a
tools.yaml this is the generic ``data`` environment every ``--data`` run (and
every job on data files without ``data.env``) uses: the rows' tools and
messages, nothing of ours. One pooled HTTP
client per endpoint serves the whole run; one MCP session per rollout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentrft.errors import ConfigError
from agentrft.tools.base import Tool
from agentrft.tools.environment import Environment, EnvSpec
from agentrft.tools.http_endpoint import EndpointClient, EndpointToolConfig, endpoint_clients, endpoint_tools_for_row
from agentrft.tools.mcp_tools import MCPServerConfig, MCPToolset
from agentrft.trust import TRUSTED_JOB, JobTrust, job_trust
from agentrft.types import TaskRow


class ToolsConfig(BaseModel):
    """The ``tools.yaml`` of a bring-your-own run."""

    model_config = ConfigDict(extra="forbid")

    endpoints: list[EndpointToolConfig] = Field(default_factory=list)
    """HTTP tools in OpenAI's Agent RFT wire format; schemas come from each row's ``tools``."""
    mcp_servers: list[MCPServerConfig] = Field(default_factory=list)
    """MCP servers (stdio or streamable HTTP); one session per rollout."""


def load_tools_config(source: str | Path | dict[str, Any] | None) -> ToolsConfig:
    if source is None:
        return ToolsConfig()
    raw: Any = source
    if isinstance(source, (str, Path)):
        try:
            raw = yaml.safe_load(Path(source).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"tools config not found: {source}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"tools config {source} is not valid YAML: {e}") from None
    where = f" {source}" if isinstance(source, (str, Path)) else ""
    if not isinstance(raw, dict):
        hint = " (a list of endpoint tools goes under 'endpoints:')" if isinstance(raw, list) else ""
        raise ConfigError(f"invalid tools config{where}: expected a mapping with 'endpoints' and/or 'mcp_servers', "
                          f"got {type(raw).__name__}{hint}")
    try:
        return ToolsConfig.model_validate(raw)
    except ValidationError as e:
        lines = [f"invalid tools config{where}:"]
        for err in e.errors():
            lines.append(f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None


class ExternalToolsEnvironment(Environment):
    """Per-rollout environment whose tools live elsewhere (HTTP endpoints, MCP servers)."""

    def __init__(self, config: ToolsConfig, clients: dict[str, EndpointClient], trust: JobTrust = TRUSTED_JOB):
        self._config = config
        self._clients = clients
        self._trust = trust
        self._row: TaskRow = {}
        self._toolsets: list[MCPToolset] = []

    async def asetup(self, row: TaskRow) -> None:
        self._row = row
        for server in self._config.mcp_servers:
            toolset = MCPToolset(server, egress=self._trust.egress, registry=self._trust.mcp_registry)
            await toolset.open()
            self._toolsets.append(toolset)

    async def aclose(self) -> None:
        for toolset in self._toolsets:
            await toolset.close()
        self._toolsets = []

    def extra_tools(self) -> Sequence[Tool]:
        declared = {t.name for t in self._config.endpoints}
        row_names = {(s.get("function", s) or {}).get("name") for s in self._row.get("tools") or []}
        endpoint_configs = [c for c in self._config.endpoints if c.name in row_names]
        tools: list[Tool] = list(endpoint_tools_for_row(endpoint_configs, self._row, self._clients)) if endpoint_configs else []
        for toolset in self._toolsets:
            tools.extend(t for t in toolset.tools if t.name not in declared)
        return tools


def external_env_spec(rows: list[TaskRow], tools: ToolsConfig, grade, name: str = "data") -> EnvSpec:
    """The generic environment of a task file: each row's own ``tools`` (schema-only unless an endpoint or
    MCP server of ``tools`` implements them), no system prompt or tool of ours, and ``grade``."""
    trust = job_trust()  # read here, where the job is built: rollouts run on other threads
    clients = endpoint_clients(tools.endpoints, egress=trust.egress)
    served = [f"{len(tools.endpoints)} HTTP endpoint(s)"] if tools.endpoints else []
    served += [f"{len(tools.mcp_servers)} MCP server(s)"] if tools.mcp_servers else []
    return EnvSpec(
        name=name,
        description="the rows' own tools" + (f", served by {' and '.join(served)}" if served else
                                             " (schema-only: the calls are the output)"),
        splits=("data",),
        load_split=lambda split: list(rows),
        make_env=lambda row: ExternalToolsEnvironment(tools, clients, trust),
        grade=grade,
    )
