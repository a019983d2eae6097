"""The egress policy: which URLs a grader, tool endpoint, judge or MCP server may be reached at.

Why: the platform server will accept grader specs and tool configs from API
clients, and each names a URL the server then connects to. Without a policy
that is server-side request forgery: a client points an ``endpoint`` grader
at ``http://169.254.169.254/`` (the cloud metadata service and its
credentials), at ``http://127.0.0.1:8000/`` (the server's own admin routes)
or at any host on the operator's private network, and reads the answer back
through grades and tool outputs.

:meth:`EgressPolicy.check_url` refuses, with :class:`EgressDenied`:

* a scheme other than ``http``/``https``, and userinfo (``user:pw@``) in
  the URL -- the classic way to make a URL look like an allowed host;
* a host no :attr:`EgressPolicy.allow` pattern matches (scheme + host
  [+ port] [+ path prefix]);
* a host name that is the metadata service's (``metadata.google.internal``)
  or a loopback name (``localhost``, ``*.localhost``);
* any address the host resolves to that is loopback (127.0.0.0/8, ::1, and
  0.0.0.0, which Linux connects to the local host), link-local
  (169.254.0.0/16, fe80::/10), private (10/8, 172.16/12, 192.168/16,
  100.64/10, fc00::/7 and the other non-global ranges), a cloud metadata
  address (169.254.169.254, fd00:ec2::254, ...), multicast or reserved --
  unless the operator allows loopback (``allow_loopback``) or private and
  link-local ones (``allow_private``). Metadata, multicast and reserved
  addresses are never allowed. IPv4 addresses inside IPv6 ones (``::ffff:a.b.c.d``,
  NAT64, 6to4) are judged as the IPv4 address.

Every address the name resolves to is checked, because the client may
connect to any of them. URLs are parsed with httpx, the parser of the
clients that then connect, so the check and the connection see the same
host.

DNS rebinding: this check resolves the name once; the client resolves it
again when it connects. :meth:`EgressPolicy.guard` returns, beside the check,
a transport (:class:`~agentrft.trust.transport.GuardedTransport`) that
re-checks each request when it is sent and connects plain ``http`` to the
address it vetted; the residual risk is described there.

The trusted policy (:data:`TRUSTED_EGRESS`, ``trusted=True``) checks nothing
and changes no transport: the local CLI's operator writes their own configs,
and ``http://localhost:8000`` tool servers are the common case. It is the
default everywhere a policy is taken; the platform server passes a
restrictive one.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, PrivateAttr, field_validator

from agentrft.trust.errors import EgressDenied
from agentrft.trust.transport import GuardedTransport

__all__ = ["METADATA_ADDRESSES", "METADATA_HOSTS", "TRUSTED_EGRESS", "EgressPolicy", "address_class", "resolve_host"]

METADATA_ADDRESSES = frozenset({
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
    ipaddress.ip_address("169.254.170.2"),  # AWS ECS task credentials
    ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
})
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: internal to a provider, not global
_PATTERN = re.compile(r"^(https?)://(\*\.)?([^/:@?#\[\]*]+|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?(/[^?#]*)?$")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_ENCODED_SEPARATOR = re.compile(r"%2e|%2f|%5c|\\", re.I)


def address_class(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """``global``, ``loopback``, ``link_local``, ``private``, ``metadata`` or ``reserved`` (multicast too)."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return address_class(embedded)
    if ip in METADATA_ADDRESSES:
        return "metadata"
    if ip.is_unspecified or ip.is_loopback:  # a connection to 0.0.0.0 reaches the local host on Linux
        return "loopback"
    if ip.is_link_local:
        return "link_local"
    if ip.is_multicast or ip.is_reserved:
        return "reserved"
    if ip.is_private or ip in _SHARED or not ip.is_global:
        return "private"
    return "global"


def resolve_host(host: str, port: int) -> tuple[str, ...]:
    """Every address ``host`` resolves to, as the HTTP client's ``getaddrinfo`` would (an IP stays itself)."""
    try:
        return (str(ipaddress.ip_address(host)),)
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return tuple(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class _Pattern:
    scheme: str
    wildcard: bool  # "*.example.com": the subdomains of host
    host: str
    port: int
    path: str  # "" or a prefix without the trailing "/"

    @classmethod
    def parse(cls, text: str) -> "_Pattern":
        m = _PATTERN.match(text)
        if m is None:
            raise ValueError(f"{text!r} is not scheme://host[:port][/path] with an http or https scheme")
        scheme, wildcard, host, port, path = m.groups()
        return cls(scheme, wildcard is not None, _normal_host(httpx.URL(f"{scheme}://{host}/").host),
                   int(port) if port else _DEFAULT_PORTS[scheme], (path or "").rstrip("/"))

    def matches(self, url: httpx.URL, host: str) -> bool:
        if url.scheme != self.scheme or (url.port or _DEFAULT_PORTS[url.scheme]) != self.port:
            return False
        if not (host.endswith("." + self.host) and len(host) > len(self.host) + 1 if self.wildcard
                else host == self.host):
            return False
        path = url.raw_path.decode("ascii").partition("?")[0]
        return not self.path or path == self.path or path.startswith(self.path + "/")


def _normal_host(host: str) -> str:
    return host.lower().rstrip(".")


class EgressPolicy(BaseModel):
    """Where untrusted submissions may make agentrft connect to (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trusted: bool = False
    """The operator's own runs: every URL is allowed and nothing is resolved (the default everywhere)."""
    allow: tuple[str, ...] = ()
    """URL patterns ``scheme://host[:port][/path-prefix]``; ``*.example.com`` matches its subdomains. A pattern
    without a port matches the scheme's default port; with a path, that path and what lies below it."""
    allow_loopback: bool = False
    """Allow addresses of this machine (127.0.0.0/8, ::1, 0.0.0.0, ``localhost``)."""
    allow_private: bool = False
    """Allow private and link-local addresses (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7, 169.254/16,
    fe80::/10), never the metadata ones."""

    _patterns: list[_Pattern] = PrivateAttr(default_factory=list)

    @field_validator("allow")
    @classmethod
    def _patterns_parse(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for text in value:
            _Pattern.parse(text)  # raises ValueError, which pydantic reports with the field
        return value

    def model_post_init(self, context: Any) -> None:
        self._patterns = [_Pattern.parse(text) for text in self.allow]

    def check_url(self, url: str, purpose: str) -> tuple[str, ...]:
        """The addresses ``url`` resolves to, all vetted; raise :class:`EgressDenied` naming the failed check.

        ``purpose`` names the caller in the message (``endpoint grader 'score'``).
        A trusted policy returns ``()`` without looking.
        """
        if self.trusted:
            return ()
        try:
            parsed = httpx.URL(url)
            host = _normal_host(parsed.host)  # decoding an IDNA host can fail too
        except (httpx.InvalidURL, TypeError, UnicodeError) as e:
            raise EgressDenied(str(url)[:200], purpose, f"not a valid URL ({e})") from None
        shown_url = str(parsed.copy_with(userinfo=b"") if parsed.userinfo else parsed)[:200]  # no password in logs

        def refuse(reason: str) -> EgressDenied:
            return EgressDenied(shown_url, purpose, reason)

        if parsed.scheme not in _DEFAULT_PORTS:
            raise refuse(f"the scheme {parsed.scheme!r} is not http or https")
        if parsed.userinfo:
            raise refuse("the URL carries userinfo (user:password@); put credentials in headers")
        if not host:
            raise refuse("the URL has no host")
        matched = [p for p in self._patterns if p.matches(parsed, host)]
        if not matched:
            raise refuse(f"{host} (port {parsed.port or _DEFAULT_PORTS[parsed.scheme]}) is not on the allow-list")
        if all(p.path for p in matched) and _ENCODED_SEPARATOR.search(parsed.raw_path.decode("ascii")):
            raise refuse("the path has an encoded '.', '/' or '\\' (it could climb out of an allowed prefix)")
        if host in METADATA_HOSTS:
            raise refuse(f"{host} is the cloud metadata service")
        if (host == "localhost" or host.endswith(".localhost")) and not self.allow_loopback:
            raise refuse(f"{host} is a loopback name (allow_loopback is off)")
        try:  # the ASCII (IDNA) name, which is what the client resolves: no second IDNA mapping to differ
            addresses = resolve_host(parsed.raw_host.decode("ascii").lower().rstrip("."),
                                     parsed.port or _DEFAULT_PORTS[parsed.scheme])
        except (OSError, UnicodeError) as e:
            raise refuse(f"{host} does not resolve ({e})") from None
        if not addresses:
            raise refuse(f"{host} resolves to no address")
        for address in addresses:
            kind = address_class(ipaddress.ip_address(address))
            if not self._allows(kind):
                why = {"loopback": " (allow_loopback is off)", "private": " (allow_private is off)",
                       "link_local": " (allow_private is off)"}.get(kind, " (never allowed)")
                shown = host if host == address else f"{host} resolves to {address}, which"
                raise refuse(f"{shown} is a {kind.replace('_', '-')} address{why}")
        return addresses

    def _allows(self, kind: str) -> bool:
        return (kind == "global" or (kind == "loopback" and self.allow_loopback)
                or (kind in ("private", "link_local") and self.allow_private))

    def guard(self, url: str, purpose: str, transport: Any = None) -> Any:
        """Check ``url`` now, and return the transport to reach it with.

        Trusted: ``transport`` unchanged (``None`` keeps the client's default).
        Otherwise a :class:`GuardedTransport` around ``transport`` (or the
        library's default) that checks each request again when it is sent.
        """
        self.check_url(url, purpose)
        if self.trusted:
            return transport
        return GuardedTransport(lambda sent: self.check_url(sent, purpose), transport)


TRUSTED_EGRESS = EgressPolicy(trusted=True)
"""The trusted operator's policy: everything allowed, as for the local CLI."""
