"""The trust a job runs under: what its config's URLs and commands may reach, set once per job process.

A locally started ``agentrft train`` trusts its config (its author is the operator):
:data:`TRUSTED_JOB`. A job submitted through the platform's API does not: its worker process enters
:func:`trusting` with the server's restrictive policies before it builds anything, and the places that
turn a config into connections (HTTP tool endpoints, MCP servers, endpoint and model graders) read
:func:`job_trust` when they are built. A context variable, not a parameter threaded through every layer:
the worker runs one job, and nothing in it can widen the scope it was given.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from agentrft.trust.egress import TRUSTED_EGRESS, EgressPolicy
from agentrft.trust.mcp_registry import TRUSTED_MCP_REGISTRY, McpRegistry


@dataclass(frozen=True)
class JobTrust:
    egress: EgressPolicy = TRUSTED_EGRESS
    """Where the job's tool endpoints, MCP servers and graders may connect."""
    mcp_registry: McpRegistry = TRUSTED_MCP_REGISTRY
    """The stdio MCP commands the job may launch."""


TRUSTED_JOB = JobTrust()
_current: ContextVar[JobTrust] = ContextVar("agentrft_job_trust", default=TRUSTED_JOB)


def job_trust() -> JobTrust:
    """The trust of the job being built in this context (:data:`TRUSTED_JOB` outside :func:`trusting`)."""
    return _current.get()


@contextlib.contextmanager
def trusting(trust: JobTrust) -> Iterator[JobTrust]:
    """Build and run a job under ``trust`` (the platform's worker wraps the whole job in it)."""
    token = _current.set(trust)
    try:
        yield trust
    finally:
        _current.reset(token)
