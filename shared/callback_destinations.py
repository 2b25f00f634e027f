"""Where outbound callbacks may go: public internet addresses over https, unless allowlisted.

A callback URL is chosen by whoever holds a `callbacks:manage` key, and the delivery log shows
each attempt's status and timing; without a policy it would be a port scanner for our own
network (127.0.0.1, 169.254.169.254, the compose hosts `redis` and `postgres`, private ranges).
So the host is resolved once, every address it resolves to is checked, and the request then
connects to the checked address (`services/callbacks/http.py`): no second lookup between
check and connect that DNS rebinding could change.

Refused: loopback, private (RFC 1918, carrier-grade NAT), link-local (cloud metadata),
unique-local (fc00::/7), multicast, unspecified, reserved and documentation ranges, and the
IPv4-mapped, NAT64 and 6to4 forms of those. `MYOTRIAGE_CALLBACK_ALLOWED_NETWORKS` (CIDRs,
addresses or host names, comma-separated; empty by default) lets an operator allow some, and
only destinations on it may use plain http (tests and the local run allow loopback).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from urllib.parse import urlsplit

from shared.config import Settings

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
Resolver = Callable[[str, int], Sequence[IPAddress]]

ALLOWLIST_SETTING = "MYOTRIAGE_CALLBACK_ALLOWED_NETWORKS"
HTTPS_REQUIRED = (
    "Must use https:// (http:// is accepted only for destinations the operator allowlists)."
)

# Special-purpose IPv4 ranges (IANA registry), each with the name a refusal gives.
_IPV4_RANGES: tuple[tuple[IPv4Network, str], ...] = tuple(
    (IPv4Network(cidr), name)
    for cidr, name in (
        ("0.0.0.0/8", "unspecified"),  # "this network"
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "private"),  # carrier-grade NAT shared space
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),  # cloud metadata (169.254.169.254) lives here
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "reserved"),  # IETF protocol assignments
        ("192.0.2.0/24", "reserved"),  # documentation
        ("192.88.99.0/24", "reserved"),  # 6to4 relay anycast
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "reserved"),  # benchmarking
        ("198.51.100.0/24", "reserved"),  # documentation
        ("203.0.113.0/24", "reserved"),  # documentation
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),  # includes the broadcast address
    )
)
# Special-purpose IPv6 ranges inside global unicast (2000::/3); everything outside 2000::/3
# (::, ::1, fc00::/7, fe80::/10, ff00::/8, the unassigned rest) is refused by `_ipv6_range`.
_IPV6_RANGES: tuple[tuple[IPv6Network, str], ...] = tuple(
    (IPv6Network(cidr), name)
    for cidr, name in (
        ("2001::/23", "reserved"),  # IETF protocol assignments, Teredo
        ("2001:db8::/32", "reserved"),  # documentation
        ("3fff::/20", "reserved"),  # documentation
    )
)
_GLOBAL_UNICAST = IPv6Network("2000::/3")
_NAT64 = IPv6Network("64:ff9b::/96")  # well-known prefix: the last 32 bits are an IPv4 address
_HOST_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


def forbidden_range(address: IPAddress) -> str | None:
    """The special-purpose range `address` is in (loopback, private, link-local, unique-local,
    multicast, unspecified, reserved), or None for a public address.

    IPv6 forms that carry an IPv4 address (IPv4-mapped, NAT64, 6to4) are judged by that address.
    """
    if isinstance(address, IPv4Address):
        for network, name in _IPV4_RANGES:
            if address in network:
                return name
        return None
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return forbidden_range(embedded)
    return _ipv6_range(address)


def _ipv6_range(address: IPv6Address) -> str | None:
    if address == IPv6Address("::"):
        return "unspecified"
    if address == IPv6Address("::1"):
        return "loopback"
    if address in IPv6Network("fc00::/7"):
        return "unique-local"
    if address in IPv6Network("fe80::/10"):
        return "link-local"
    if address in IPv6Network("ff00::/8"):
        return "multicast"
    if address not in _GLOBAL_UNICAST:
        return "reserved"  # deprecated site-local, IPv4-compatible, discard-only, unassigned
    for network, name in _IPV6_RANGES:
        if address in network:
            return name
    return None


def _embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour  # 2002::/16, else None


def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to for a TCP connection, in the system's preferred order."""
    # Imported here: urllib3 knows whether this host can use IPv6 at all, as its own
    # connections do (it is a dependency of requests, which every caller of this has).
    from urllib3.util.connection import allowed_gai_family

    answers = socket.getaddrinfo(host, port, allowed_gai_family(), socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for family, _, _, _, sockaddr in answers:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ip_address(str(sockaddr[0]))
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise socket.gaierror(socket.EAI_NONAME, "no IPv4 or IPv6 address")
    return addresses


class DestinationRefused(Exception):
    """A callback URL we will not send to. `reason` may be shown to the subscriber (the
    subscription API does); `code` names the rule, for our own logs."""

    def __init__(self, reason: str, code: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class HostUnresolved(Exception):
    """The URL's host name does not resolve (now): nothing to check, nowhere to connect."""


@dataclass(frozen=True)
class Destination:
    """Where one request goes: the URL's host (for the Host header, TLS SNI and the certificate
    check) and the checked address the connection is made to."""

    scheme: str
    host: str  # as in the URL, lower-case, IPv6 without brackets
    port: int | None  # as in the URL (None: the scheme's default)
    address: IPAddress

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


@dataclass(frozen=True)
class DestinationPolicy:
    """The address rules plus the operator's allowlist. Empty allowlist: public https only."""

    allowed_networks: tuple[IPNetwork, ...] = ()
    allowed_hosts: frozenset[str] = frozenset()
    resolver: Resolver = resolve_host

    @classmethod
    def from_settings(cls, settings: Settings) -> DestinationPolicy:
        return cls.parse(settings.callback_allowed_networks)

    @classmethod
    def parse(cls, allowlist: str, resolver: Resolver = resolve_host) -> DestinationPolicy:
        """`"127.0.0.0/8, ::1, ehr.internal"` → networks and host names; ValueError on junk."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for item in (part.strip() for part in allowlist.split(",")):
            if not item:
                continue
            try:
                networks.append(ip_network(item, strict=False))
                continue
            except ValueError:
                pass
            if not _is_host_name(item):
                raise ValueError(
                    f"{ALLOWLIST_SETTING}: {item!r} is neither a network (CIDR or address) "
                    "nor a host name"
                )
            hosts.add(_host_key(item))
        return cls(tuple(networks), frozenset(hosts), resolver)

    def allows_address(self, address: IPAddress, *, plain_http: bool = False) -> bool:
        """Whether we may connect to `address` (over plain http: only if allowlisted)."""
        if self._allowlisted(address):
            return True
        return not plain_http and forbidden_range(address) is None

    def destination(self, url: str) -> Destination:
        """Resolve `url`'s host once, check every address, and pin the first.

        Raises DestinationRefused, or HostUnresolved when the name does not resolve.
        """
        scheme, host, port = _parts(url)
        literal = _literal_address(host)
        if literal is not None:
            addresses: Sequence[IPAddress] = [literal]
        else:
            try:
                addresses = self.resolver(host, port or _default_port(scheme))
            except (OSError, UnicodeError) as exc:  # socket.gaierror, a resolver timeout
                raise HostUnresolved(host) from exc
            if not addresses:
                raise HostUnresolved(host)
        if literal is not None or _host_key(host) not in self.allowed_hosts:
            for address in addresses:
                self._check(address, scheme)
        return Destination(scheme, host, port, addresses[0])

    def check_subscription_url(self, url: str) -> None:
        """The subscription API's check: as at delivery, except that an https host name that
        does not resolve yet is accepted (every delivery checks again)."""
        try:
            self.destination(url)
        except HostUnresolved:
            scheme, host, _ = _parts(url)
            if scheme != "https" and _host_key(host) not in self.allowed_hosts:
                raise DestinationRefused(HTTPS_REQUIRED, "https-required") from None

    def _check(self, address: IPAddress, scheme: str) -> None:
        if self._allowlisted(address):
            return
        name = forbidden_range(address)
        if name is not None:
            raise DestinationRefused(
                f"Must not point at a {name} address: callbacks go only to public internet "
                "addresses.",
                name,
            )
        if scheme != "https":
            raise DestinationRefused(HTTPS_REQUIRED, "https-required")

    def _allowlisted(self, address: IPAddress) -> bool:
        candidates: list[IPAddress] = [address]
        if isinstance(address, IPv6Address):
            embedded = _embedded_ipv4(address)
            if embedded is not None:
                candidates.append(embedded)
        return any(
            candidate in network
            for candidate in candidates
            for network in self.allowed_networks
            if candidate.version == network.version
        )


def _parts(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise DestinationRefused("Must be an absolute http:// or https:// URL.", "scheme")
    try:
        port = parts.port
    except ValueError:
        raise DestinationRefused("Has an invalid port.", "port") from None
    if port == 0:
        raise DestinationRefused("Has an invalid port.", "port")
    return scheme, parts.hostname, port


def _literal_address(host: str) -> IPAddress | None:
    try:
        return ip_address(host)
    except ValueError:
        return None


def _is_host_name(text: str) -> bool:
    name = _host_key(text)
    return 0 < len(name) <= 253 and all(_HOST_LABEL.match(label) for label in name.split("."))


def _host_key(host: str) -> str:
    return host.lower().rstrip(".")


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80
