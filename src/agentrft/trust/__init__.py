"""The trust boundary: what untrusted API clients may make agentrft connect to, launch and submit.

The local CLI's user is the operator and is trusted: every default here
allows what agentrft did before. The platform server, whose API clients
are not trusted, builds restrictive instances and passes them where URLs,
commands and submissions enter:

* :class:`EgressPolicy` (:mod:`.egress`) -- the URLs of ``endpoint`` graders,
  judge base URLs, HTTP tool endpoints and HTTP MCP servers: an allow-list,
  no loopback, private, link-local or metadata addresses unless allowed,
  checked on every resolved address and again when connecting
  (:mod:`.transport`);
* :class:`McpRegistry` (:mod:`.mcp_registry`) -- the only stdio MCP
  commands a submitted config may launch;
* :class:`SubmissionLimits` (:mod:`.limits`) -- sizes, counts and
  concurrency per submission.

Every refusal is a :class:`TrustError` (an :class:`~agentrft.errors.AgentRFTError`).
The threat model these serve is in docs/security.md.
"""

from agentrft.trust.egress import TRUSTED_EGRESS, EgressPolicy, address_class, resolve_host
from agentrft.trust.errors import EgressDenied, EgressDeniedAtConnect, LimitExceeded, McpCommandRefused, TrustError
from agentrft.trust.limits import SubmissionLimits
from agentrft.trust.mcp_registry import TRUSTED_MCP_REGISTRY, McpCommand, McpRegistry
from agentrft.trust.scope import TRUSTED_JOB, JobTrust, job_trust, trusting
from agentrft.trust.transport import GuardedTransport

__all__ = [
    "TRUSTED_EGRESS",
    "TRUSTED_JOB",
    "TRUSTED_MCP_REGISTRY",
    "EgressDenied",
    "EgressDeniedAtConnect",
    "EgressPolicy",
    "GuardedTransport",
    "JobTrust",
    "LimitExceeded",
    "McpCommand",
    "McpCommandRefused",
    "McpRegistry",
    "SubmissionLimits",
    "TrustError",
    "job_trust",
    "trusting",
    "address_class",
    "resolve_host",
]
