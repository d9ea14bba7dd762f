"""Outbound HTTP to the business's own API, guarded against server-side request forgery.

A tool's URL is built by the gateway from a declared connection, but its host still resolves
through DNS, which an attacker may control (a name that answers 169.254.169.254, or a public
address first and 127.0.0.1 a second later: DNS rebinding). So every address is checked where
the connection is made: the resolver below checks what it resolved, and aiohttp connects to
exactly those checked addresses; a literal IP in the URL (which aiohttp does not resolve) is
checked before the request. Addresses that are not globally routable (loopback, private,
link-local with the cloud metadata services, CGNAT, reserved, multicast) are refused unless
the operator allowed their network for this connection (the demo shop on 127.0.0.1).

No redirect is followed (an API that redirects is a misconfiguration, and a redirect is how a
checked host hands a request to an unchecked one), and a response body is read up to a cap.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

from aiohttp import ClientSession, TCPConnector
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Names every resolver answers with a loopback address, refused at load like a literal one.
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class Refused(Exception):
    """The gateway would not make this request: the host or address is not allowed."""


class ResponseTooLarge(Exception):
    """The response body passed the connection's cap."""


def forbidden(address: IPAddress, allowed: Sequence[IPNetwork]) -> bool:
    """True for an address outside the public internet that no allowed network covers.

    `is_global` is False for loopback, RFC 1918 and unique-local (fd00:ec2::254 included),
    link-local (169.254.169.254), CGNAT (100.64.0.0/10) and the reserved ranges; an IPv4
    address mapped into IPv6 (::ffff:127.0.0.1) is judged as the IPv4 address it is.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in allowed):
        return False
    return not address.is_global or address.is_multicast


def literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class GuardedResolver(AbstractResolver):
    """Resolves with the system resolver, then refuses the whole name if any address it
    answered is forbidden (a name with one private address is not half-allowed)."""

    def __init__(
        self, allowed: Sequence[IPNetwork], resolver: AbstractResolver | None = None
    ) -> None:
        self._allowed = tuple(allowed)
        self._resolver = resolver or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        for result in results:
            if forbidden(ipaddress.ip_address(result["host"]), self._allowed):
                raise Refused(f"{host} resolves to {result['host']}, which is not allowed")
        return results

    async def close(self) -> None:
        await self._resolver.close()


class GuardedClient:
    """One connection's HTTP client: only `hosts`, only allowed addresses, no redirects,
    bodies up to `max_bytes`. Opened lazily, inside the running event loop."""

    def __init__(
        self,
        *,
        hosts: Sequence[str],
        allowed: Sequence[IPNetwork],
        max_bytes: int,
        resolver: AbstractResolver | None = None,  # the name service; default: the system's
    ) -> None:
        self._resolver = resolver
        self._hosts = frozenset(host.lower() for host in hosts)
        self._allowed = tuple(allowed)
        self._max_bytes = max_bytes
        self._session: ClientSession | None = None

    def check(self, url: URL) -> None:
        """Refuse a URL whose host is not the connection's, or is a forbidden literal IP."""
        host = (url.host or "").lower()
        if host not in self._hosts:
            raise Refused(f"host {host!r} is not among the connection's allowed hosts")
        address = literal_address(host)
        if address is not None and forbidden(address, self._allowed):
            raise Refused(f"address {host} is not allowed")

    async def request(
        self,
        method: str,
        url: URL,
        *,
        headers: dict[str, str],
        params: dict[str, str] | None = None,
        json: Any = None,
    ) -> tuple[int, bytes]:
        """The status and body; raises Refused, ResponseTooLarge and aiohttp's errors. The
        caller bounds the time (`asyncio.timeout`), the resolution included."""
        self.check(url)
        session = self._open()
        async with session.request(
            method,
            url,
            headers=headers,
            params=params,
            json=json,
            allow_redirects=False,
        ) as response:
            body = await response.content.read(self._max_bytes + 1)
            if len(body) > self._max_bytes:
                raise ResponseTooLarge(f"the response passed {self._max_bytes} bytes")
            return response.status, body

    def _open(self) -> ClientSession:
        if self._session is None or self._session.closed:
            resolver = GuardedResolver(self._allowed, self._resolver)
            connector = TCPConnector(resolver=resolver, limit=64)
            # trust_env=False: an HTTP(S)_PROXY variable must not route around the guard.
            self._session = ClientSession(connector=connector, trust_env=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
