"""The typed errors of the trust boundary: an egress refusal, an unregistered MCP command, a limit passed.

Each is an :class:`~agentrft.errors.AgentRFTError`, so the platform server
turns every one into a 4xx answer with one handler, and each carries the
fields a client needs to fix its submission (the URL and why, the limit's
name and value).
"""

from __future__ import annotations

import httpx

from agentrft.errors import AgentRFTError

__all__ = ["EgressDenied", "EgressDeniedAtConnect", "LimitExceeded", "McpCommandRefused", "TrustError"]


class TrustError(AgentRFTError):
    """A submission asks for something the operator's policy does not allow."""


class EgressDenied(TrustError):
    """A URL is not one the policy lets ``purpose`` reach; ``reason`` says which check refused it."""

    def __init__(self, url: str, purpose: str, reason: str):
        super().__init__(f"{purpose}: egress to {url} refused: {reason}")
        self.url, self.purpose, self.reason = url, purpose, reason


class EgressDeniedAtConnect(EgressDenied, httpx.ConnectError):
    """The re-check when connecting refused an address (the host now resolves elsewhere: DNS rebinding).

    Also an ``httpx.ConnectError``, so every HTTP caller handles it as the
    connection failure it is (retried, then recorded on the sample or the
    rollout) instead of crashing.
    """

    def __init__(self, url: str, purpose: str, reason: str, request: httpx.Request | None = None):
        EgressDenied.__init__(self, url, purpose, reason)
        self._request = request  # httpx.RequestError's slot, read by its ``request`` property


class McpCommandRefused(TrustError):
    """A stdio MCP server config whose launch (command, args, env, cwd) is not in the operator's registry."""


class LimitExceeded(TrustError):
    """A submission passes one of :class:`~agentrft.trust.SubmissionLimits`: ``limit`` is the field's name."""

    def __init__(self, limit: str, maximum: int, value: int, what: str):
        super().__init__(f"{what} is {value}; the limit {limit} is {maximum}")
        self.limit, self.maximum, self.value = limit, maximum, value
