"""The outbound address policy: every spelling of a refused address, the explicit allowance, own ports."""
from __future__ import annotations

import ipaddress

import pytest

from middleware.netpolicy import NetPolicy, classify, parse_ip_literal, url_refusal

METADATA_SPELLINGS = [
    "169.254.169.254",
    "2852039166",  # decimal
    "0251.0376.0251.0376",  # octal
    "0xa9fea9fe",  # hex
    "0xA9.0xFE.0xA9.0xFE",
    "169.254.43518",  # a.b.c16
    "169.16689662",  # a.b24
    "0251.254.0xa9fe",
    "169.254.169.254.",  # trailing dot
    "[::ffff:169.254.169.254]",  # IPv4-mapped IPv6
    "[::ffff:a9fe:a9fe]",
    "[::169.254.169.254]",  # IPv4-compatible (deprecated)
    "[2002:a9fe:a9fe::1]",  # 6to4
    "[64:ff9b::169.254.169.254]",  # NAT64
    "[fe80::1%25eth0]",
    "[fd00:ec2::254]",  # AWS IMDS over IPv6
    "100.100.100.200",  # Alibaba Cloud metadata
    "168.63.129.16",  # Azure wire server
    "metadata.google.internal",
    "METADATA.GOOGLE.INTERNAL.",
    "\uff11\uff16\uff19\uff0e254\uff0e169\uff0e254",  # fullwidth digits and dots (IDNA maps them)
]

PRIVATE_SPELLINGS = [
    "127.0.0.1", "127.1", "2130706433", "0x7f000001", "017700000001", "0", "0.0.0.0", "localhost", "app.localhost",
    "[::1]", "[::ffff:127.0.0.1]", "[::]", "10.1.2.3", "167772161", "172.16.0.1", "172.31.255.254",
    "192.168.1.1", "[fc00::1]", "[fd12:3456::1]", "100.64.0.1", "100.127.255.254",
]


@pytest.mark.parametrize("host", METADATA_SPELLINGS)
def test_metadata_and_link_local_refused_in_every_spelling_even_when_private_allowed(host: str) -> None:
    reason = url_refusal(f"http://{host}/latest/meta-data/", NetPolicy(allow_private=True))
    assert reason is not None and "always refused" in reason


@pytest.mark.parametrize("host", PRIVATE_SPELLINGS)
def test_loopback_and_private_refused_unless_allowed(host: str) -> None:
    reason = url_refusal(f"http://{host}:9000/hooks", NetPolicy())
    assert reason is not None and "allow_private_network" in reason
    assert url_refusal(f"http://{host}:9000/hooks", NetPolicy(allow_private=True)) is None


@pytest.mark.parametrize("url", ["https://hooks.example.org/x", "http://93.184.215.14:8443/", "https://[2606:4700::1]/",
                                 "https://172.32.0.1/", "https://100.128.0.1/"])
def test_public_addresses_and_names_pass(url: str) -> None:
    assert url_refusal(url, NetPolicy()) is None


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://fhir.example.org/", "gopher://x/", "/relative/path",
                                 "http://", "https:///nohost", "javascript:alert(1)"])
def test_only_http_and_https_urls_with_a_host(url: str) -> None:
    assert url_refusal(url, NetPolicy(allow_private=True)) is not None


def test_careloops_own_ports_on_this_host_refused_even_with_the_allowance() -> None:
    pol = NetPolicy(allow_private=True, own_ports=frozenset({8080, 2575}))
    for url in ("http://127.0.0.1:8080/api/mappings/reload", "http://localhost:2575/", "http://[::1]:8080/",
                "http://0.0.0.0:8080/", "http://2130706433:8080/"):
        reason = url_refusal(url, pol)
        assert reason is not None and "careloop's own" in reason, url
    assert url_refusal("http://127.0.0.1:9000/hooks", pol) is None
    assert url_refusal("http://10.0.0.5:8080/", pol) is None  # another host's 8080


@pytest.mark.parametrize("text,expected", [
    ("2852039166", "169.254.169.254"), ("0x7f.1", "127.0.0.1"), ("1.2.3", "1.2.0.3"), ("0x", "0.0.0.0"),
    ("1.2.3.4.5", None), ("256.1.1.1", None), ("1.2.3.256", None), ("089.1.1.1", None), ("1..2", None),
    ("4294967296", None), ("example.org", None), ("12.example", None), ("", None),
])
def test_inet_aton_forms(text: str, expected: str | None) -> None:
    got = parse_ip_literal(text)
    assert (str(got) if got is not None else None) == expected


def test_embedded_ipv4_is_at_least_as_strict_as_the_outer_address() -> None:
    assert classify(ipaddress.ip_address("::ffff:10.0.0.1")) == "private"
    assert classify(ipaddress.ip_address("::ffff:8.8.8.8")) == "public"
    assert classify(ipaddress.ip_address("2002:0a00:0001::1")) == "private"
