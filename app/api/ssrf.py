"""Callback URL safety: refuse URLs whose host resolves to loopback, private, link-local,
cloud-metadata or otherwise non-public addresses (SSRF), unless the operator allowlisted it.

Checked at submit and again at send time, where the dispatcher then connects to exactly the
address it checked, so a DNS answer that changes in between (rebinding) cannot redirect it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from app.errors import StemfleetError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]

MAX_URL_LENGTH = 2048
_METADATA = {
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, DigitalOcean, Oracle...
    ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
}


class UnsafeCallbackUrl(StemfleetError):
    """The callback URL is malformed or points at an address the server must not call."""


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


@dataclass(frozen=True)
class CallbackTarget:
    url: str
    scheme: str
    host: str  # as written in the URL, lower-case, without brackets
    port: int
    addresses: list[IPAddress]  # checked addresses, in the resolver's order


def _unwrap(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def address_problem(address: IPAddress) -> str | None:
    """Why an address is off limits, or None for a public one."""
    address = _unwrap(address)
    if address in _METADATA:
        return "a cloud metadata address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_private:
        return "a private address"
    if address.is_multicast or address.is_unspecified or address.is_reserved:
        return "a reserved address"
    if not address.is_global:
        return "a non-public address"
    return None


class CallbackPolicy:
    """`allowlist` entries: host names ("hooks.internal", "*.corp.example"), addresses or
    networks ("127.0.0.1", "10.0.0.0/8", "::1")."""

    def __init__(self, allowlist: list[str], resolver: Resolver = system_resolver) -> None:
        self.resolver = resolver
        self._names: set[str] = set()
        self._suffixes: list[str] = []
        self._networks: list[Network] = []
        for entry in (e.strip().lower() for e in allowlist):
            if not entry:
                continue
            try:
                self._networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                if entry.startswith("*."):
                    self._suffixes.append(entry[1:])
                else:
                    self._names.add(entry)

    def _name_allowed(self, host: str) -> bool:
        return host in self._names or any(host.endswith(s) for s in self._suffixes)

    def _address_allowed(self, address: IPAddress) -> bool:
        return any(_unwrap(address) in net or address in net for net in self._networks)

    def check(self, url: str) -> CallbackTarget:
        """Parse, resolve and vet `url`; raises UnsafeCallbackUrl naming the problem."""
        if len(url) > MAX_URL_LENGTH:
            raise UnsafeCallbackUrl(f"callback_url is longer than {MAX_URL_LENGTH} characters")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise UnsafeCallbackUrl(f"callback_url is not a valid URL: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise UnsafeCallbackUrl("callback_url must be an http:// or https:// URL")
        host = (parts.hostname or "").lower()
        if not host:
            raise UnsafeCallbackUrl("callback_url has no host")
        port = port or (443 if scheme == "https" else 80)
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [literal]
        else:
            try:
                addresses = [
                    ipaddress.ip_address(a.split("%")[0]) for a in self.resolver(host, port)
                ]
            except (OSError, UnicodeError) as exc:
                raise UnsafeCallbackUrl(
                    f"callback_url host {host!r} does not resolve ({exc}); use a public host name"
                ) from None
            if not addresses:
                raise UnsafeCallbackUrl(f"callback_url host {host!r} does not resolve")
        if not self._name_allowed(host):
            for address in addresses:
                problem = address_problem(address)
                if problem and not self._address_allowed(address):
                    raise UnsafeCallbackUrl(
                        f"callback_url host {host!r} resolves to {address}, {problem}; the "
                        "server only calls public addresses (an operator can allow this host "
                        "with STEMFLEET_CALLBACK_ALLOWLIST)"
                    )
        return CallbackTarget(url=url, scheme=scheme, host=host, port=port, addresses=addresses)
