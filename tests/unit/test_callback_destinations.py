"""Where callbacks may go: every special-purpose range is refused (IPv4, IPv6 and the IPv6 forms
that carry an IPv4 address), the allowlist lets an operator allow some, and plain http is only
for allowlisted destinations. No connection is made here: host names go to fake resolvers,
except `localhost`, which /etc/hosts answers."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from shared.callback_destinations import (
    HTTPS_REQUIRED,
    Destination,
    DestinationPolicy,
    DestinationRefused,
    HostUnresolved,
    IPAddress,
    Resolver,
    forbidden_range,
)
from shared.config import Settings

FORBIDDEN = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.0.0.1", "private"),
    ("10.255.255.255", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.168.1.10", "private"),
    ("100.64.0.1", "private"),  # carrier-grade NAT
    ("169.254.169.254", "link-local"),  # cloud metadata
    ("169.254.0.1", "link-local"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("192.0.0.8", "reserved"),
    ("192.0.2.10", "reserved"),
    ("198.18.0.1", "reserved"),
    ("198.51.100.7", "reserved"),
    ("203.0.113.9", "reserved"),
    ("192.88.99.1", "reserved"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("fc00::1", "unique-local"),
    ("fd12:3456:789a::1", "unique-local"),
    ("ff02::1", "multicast"),
    ("ff05::1:3", "multicast"),
    ("fec0::1", "reserved"),  # deprecated site-local
    ("100::1", "reserved"),  # discard-only
    ("2001:db8::1", "reserved"),  # documentation
    ("2001::1", "reserved"),  # Teredo
    ("3fff::1", "reserved"),
    ("64:ff9b:1::1", "reserved"),  # local-use NAT64
    ("::127.0.0.1", "reserved"),  # IPv4-compatible (deprecated)
    # IPv4-mapped IPv6: the IPv4 address decides.
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.1.2.3", "private"),
    ("::ffff:169.254.169.254", "link-local"),
    ("::ffff:0.0.0.0", "unspecified"),
    ("::ffff:224.0.0.1", "multicast"),
    # NAT64 (64:ff9b::/96) and 6to4 (2002::/16) forms likewise.
    ("64:ff9b::7f00:1", "loopback"),
    ("64:ff9b::a9fe:a9fe", "link-local"),
    ("2002:7f00:1::1", "loopback"),
    ("2002:c0a8:101::1", "private"),
    ("2002:a9fe:a9fe::", "link-local"),
]

PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.215.14",
    "172.32.0.1",  # just past 172.16.0.0/12
    "100.128.0.1",  # just past 100.64.0.0/10
    "169.255.0.1",
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::1",
]


def resolving(*answers: str) -> tuple[list[tuple[str, int]], Resolver]:
    """A fake resolver answering `answers` for every name, and the list of what it was asked."""
    asked: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> Sequence[IPAddress]:
        asked.append((host, port))
        return [ip_address(a) for a in answers]

    return asked, resolve


def not_resolving(host: str, port: int) -> Sequence[IPAddress]:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.mark.parametrize(("address", "name"), FORBIDDEN)
def test_every_special_purpose_range_is_named(address: str, name: str) -> None:
    assert forbidden_range(ip_address(address)) == name


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert forbidden_range(ip_address(address)) is None


@pytest.mark.parametrize(("address", "name"), FORBIDDEN)
def test_a_url_at_a_forbidden_address_is_refused_even_over_https(address: str, name: str) -> None:
    host = f"[{address}]" if ":" in address else address
    if "%" in host:
        host = host.replace("%", "%25")  # a zone id in a URL
    with pytest.raises(DestinationRefused) as refused:
        DestinationPolicy().destination(f"https://{host}/hook")
    assert refused.value.code == name
    assert name in refused.value.reason


def test_without_an_allowlist_only_public_https_passes() -> None:
    policy = DestinationPolicy()
    pinned = policy.destination("https://8.8.8.8/hook")
    assert pinned.address == IPv4Address("8.8.8.8") and pinned.host_header == "8.8.8.8"
    with pytest.raises(DestinationRefused) as plain:
        policy.destination("http://8.8.8.8/hook")
    assert plain.value.code == "https-required" and plain.value.reason == HTTPS_REQUIRED


def test_a_host_name_is_judged_by_every_address_it_resolves_to() -> None:
    asked, resolve = resolving("8.8.8.8", "10.0.0.7")
    policy = DestinationPolicy(resolver=resolve)
    with pytest.raises(DestinationRefused) as refused:
        policy.destination("https://ehr.example:8443/hook")
    assert refused.value.code == "private"
    assert asked == [("ehr.example", 8443)]

    asked, resolve = resolving("2606:4700:4700::1111", "8.8.8.8")
    pinned = DestinationPolicy(resolver=resolve).destination("https://EHR.example/hook")
    # The first address, which was checked, is the one to connect to; the name stays for
    # the Host header, SNI and the certificate.
    assert pinned == Destination("https", "ehr.example", None, IPv6Address("2606:4700:4700::1111"))
    assert pinned.host_header == "ehr.example"
    assert asked == [("ehr.example", 443)]


def test_localhost_is_refused_without_the_allowlist() -> None:
    for url in ("https://localhost/hook", "http://localhost:8080/hook", "https://LOCALHOST/"):
        with pytest.raises(DestinationRefused) as refused:
            DestinationPolicy().destination(url)
        assert refused.value.code == "loopback"
        with pytest.raises(DestinationRefused):
            DestinationPolicy().check_subscription_url(url)


def test_numeric_spellings_of_loopback_are_refused() -> None:
    # The system resolver reads these as 127.0.0.1; the check sees what it resolved to.
    for host in ("2130706433", "0x7f000001", "127.1"):
        with pytest.raises(DestinationRefused) as refused:
            DestinationPolicy().destination(f"https://{host}/hook")
        assert refused.value.code == "loopback"


def test_the_allowlist_allows_its_networks_and_plain_http_to_them_only() -> None:
    policy = DestinationPolicy.parse("127.0.0.0/8, 10.20.0.0/16")
    assert policy.destination("http://127.0.0.1:9000/hook").host_header == "127.0.0.1:9000"
    assert policy.destination("https://10.20.3.4/hook").address == IPv4Address("10.20.3.4")
    # Its IPv4-mapped form is the same address.
    assert policy.destination("http://[::ffff:127.0.0.1]:9000/").host_header == (
        "[::ffff:127.0.0.1]:9000"
    )
    for url, code in (
        ("http://[::1]/hook", "loopback"),  # not on the list
        ("https://10.21.0.1/hook", "private"),
        ("https://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://8.8.8.8/hook", "https-required"),  # public, but plain http
    ):
        with pytest.raises(DestinationRefused) as refused:
            policy.destination(url)
        assert refused.value.code == code, url
    assert policy.destination("https://8.8.8.8/").address == IPv4Address("8.8.8.8")
    assert policy.allows_address(IPv4Address("127.0.0.1"), plain_http=True)
    assert not policy.allows_address(IPv4Address("8.8.8.8"), plain_http=True)
    assert not policy.allows_address(IPv6Address("::1"))


def test_an_allowlisted_host_name_may_resolve_anywhere_and_use_http() -> None:
    _, resolve = resolving("10.0.0.5")
    policy = DestinationPolicy.parse("ehr-gateway.hospital.internal.", resolver=resolve)
    pinned = policy.destination("http://EHR-Gateway.hospital.internal/hook")
    assert pinned.address == IPv4Address("10.0.0.5")
    with pytest.raises(DestinationRefused):
        policy.destination("http://other.hospital.internal/hook")  # same address, not listed


def test_a_name_that_does_not_resolve() -> None:
    policy = DestinationPolicy(resolver=not_resolving)
    with pytest.raises(HostUnresolved):
        policy.destination("https://not-yet.example/hook")
    # At subscription time an https name that does not resolve yet is accepted (each delivery
    # checks again); a plain http one cannot be shown to be allowlisted.
    policy.check_subscription_url("https://not-yet.example/hook")
    with pytest.raises(DestinationRefused) as refused:
        policy.check_subscription_url("http://not-yet.example/hook")
    assert refused.value.code == "https-required"


def test_bad_urls_are_refused() -> None:
    for url in (
        "ftp://ehr.example/",
        "https:///nohost",
        "https://ehr.example:0/",
        "https://h:99999/",
    ):
        with pytest.raises(DestinationRefused):
            DestinationPolicy(resolver=not_resolving).check_subscription_url(url)


def test_the_allowlist_setting_is_parsed_and_checked() -> None:
    assert DestinationPolicy.from_settings(Settings()) == DestinationPolicy()
    policy = DestinationPolicy.from_settings(
        Settings(callback_allowed_networks=" 127.0.0.0/8, ::1 ,, fd00::/8, 10.1.2.3, EHR.local ")
    )
    assert [str(n) for n in policy.allowed_networks] == [
        "127.0.0.0/8",
        "::1/128",
        "fd00::/8",
        "10.1.2.3/32",
    ]
    assert policy.allowed_hosts == frozenset({"ehr.local"})
    for junk in ("10.0.0.0/33", "not a host!", "http://ehr.example/", "-bad.example"):
        with pytest.raises(ValueError, match="MYOTRIAGE_CALLBACK_ALLOWED_NETWORKS"):
            DestinationPolicy.parse(junk)
