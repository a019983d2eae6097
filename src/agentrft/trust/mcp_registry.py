"""The operator's registry of MCP stdio servers: the only commands a submitted MCP config may launch.

Why: a stdio MCP config is a command line run on the server's host
(``command``, ``args``, ``env``, ``cwd``). From an API client that is remote
code execution -- ``python -c ...``, ``sh``, or a harmless ``npx`` with
``NODE_OPTIONS`` in ``env`` -- so the platform server runs only launches its
operator declared. A submitted config passes when its whole launch equals a
registered one; anything else, an extra argument or environment variable
included, is refused with :class:`McpCommandRefused`. HTTP MCP servers go
through the egress policy instead (:mod:`agentrft.trust.egress`).

The trusted registry (:data:`TRUSTED_MCP_REGISTRY`) admits every command: the
local CLI's operator wrote the config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from agentrft.trust.errors import McpCommandRefused

__all__ = ["TRUSTED_MCP_REGISTRY", "McpCommand", "McpRegistry"]


class McpCommand(BaseModel):
    """One registered stdio MCP server launch."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: str = Field(min_length=1)
    """The executable, exactly as a config must name it (``npx``, ``/opt/mcp/bin/server``)."""
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = Field(default_factory=dict)
    """Environment variables of the launch; a config must give exactly these."""
    cwd: str | None = None


class McpRegistry(BaseModel):
    """Operator-declared stdio MCP servers by name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trusted: bool = False
    """Admit every command (the local CLI; the default where a registry is taken)."""
    servers: Mapping[str, McpCommand] = Field(default_factory=dict)
    """name -> the launch it stands for."""

    def check_stdio(self, name: str, command: str, args: Sequence[str] = (),
                    env: Mapping[str, str] | None = None, cwd: str | None = None) -> str:
        """The registered name of this launch; raise :class:`McpCommandRefused` if none matches it exactly."""
        if self.trusted:
            return name
        launch = McpCommand(command=command or "?", args=tuple(args), env=dict(env or {}), cwd=cwd)
        for registered_name, registered in self.servers.items():
            if registered == launch:
                return registered_name
        registered_names = ", ".join(sorted(self.servers)) or "none"
        raise McpCommandRefused(
            f"MCP server {name!r}: the stdio command {' '.join([command, *args])[:200]!r}"
            f"{' with env ' + ', '.join(sorted(env)) if env else ''} is not in the operator's registry "
            f"(registered: {registered_names}); use a registered server's exact command, args and env"
        )

    def resolve(self, name: str) -> McpCommand:
        """The launch registered as ``name``; :class:`McpCommandRefused` if there is none."""
        if name not in self.servers:
            raise McpCommandRefused(f"no MCP server {name!r} in the operator's registry "
                                    f"(registered: {', '.join(sorted(self.servers)) or 'none'})")
        return self.servers[name]


TRUSTED_MCP_REGISTRY = McpRegistry(trusted=True)
"""The trusted operator's registry: every stdio command is admitted, as for the local CLI."""
