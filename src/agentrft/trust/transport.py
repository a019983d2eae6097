"""The connect-time half of the egress policy: an httpx transport that re-checks every request's host.

Why: a check made when a grader or tool is built resolves the host once;
the HTTP client resolves it again when it connects, and a name whose DNS
answers change (DNS rebinding, a TTL of 0) can pass the first check with a
public address and then connect to ``127.0.0.1`` or the cloud metadata
service. :class:`GuardedTransport` closes that window for every request:

* it runs the policy's check on the request's URL just before the request
  goes out, resolving the host again and vetting every address;
* for ``http://`` it then connects to the address it vetted -- the request's
  URL is rewritten to that IP, the ``Host`` header keeps the name -- so the
  address checked is the address connected to;
* ``https://`` is not rewritten (the TLS certificate is checked against the
  name): a later answer that points elsewhere fails the TLS handshake unless
  the server there holds a valid certificate for the name. The residual
  risk is that one TCP connection and TLS ClientHello reach that address.

A refusal is :class:`~agentrft.trust.errors.EgressDeniedAtConnect`, an
``httpx.ConnectError`` too, so callers record it like any failed connection.
The transport works for ``httpx`` and for ``httpx2`` (the MCP SDK's client):
without an inner transport it makes the default one of the request's own
library, without proxies from the environment (a proxy would make the
address connected to the proxy's, not the one checked).
"""

from __future__ import annotations

import importlib
import ipaddress
from collections.abc import Callable
from typing import Any

import anyio.to_thread
import httpx

from agentrft.trust.errors import EgressDenied, EgressDeniedAtConnect

__all__ = ["GuardedTransport"]


class GuardedTransport(httpx.AsyncBaseTransport):
    """Wraps ``inner``; ``check(url) -> vetted addresses`` raises :class:`EgressDenied` to refuse a request."""

    def __init__(self, check: Callable[[str], tuple[str, ...]], inner: Any = None):
        self._check = check
        self._inner = inner

    async def handle_async_request(self, request: Any) -> Any:
        url = request.url
        try:
            addresses = await anyio.to_thread.run_sync(self._check, str(url))  # getaddrinfo blocks
        except EgressDenied as e:
            raise EgressDeniedAtConnect(e.url, e.purpose, e.reason, request=request) from None
        if self._inner is None:  # the default transport of the request's library (httpx or httpx2)
            self._inner = importlib.import_module(type(request).__module__.partition(".")[0]).AsyncHTTPTransport()
        if url.scheme == "http" and addresses and not _is_ip(url.host):
            request = type(request)(request.method, url.copy_with(host=addresses[0]), headers=request.headers,
                                    stream=request.stream, extensions=request.extensions)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        if self._inner is not None:
            await self._inner.aclose()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
