"""Listener configuration in sources.yaml (file:line errors), allow-lists and source binding,
and the PROXY protocol header parser."""
from __future__ import annotations

from pathlib import Path

import pytest

from middleware.config.listeners import address_in, networks
from middleware.config.sources import Hl7Settings, Source, Sources, load_sources
from middleware.listeners.proxy_header import ProxyHeaderError, parse_proxy_header


def test_listener_errors_are_reported_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "sources.yaml").write_text(
        "sources:\n"
        "  - name: a\n"
        "    hl7: {allow_from: ['10.0.0.0/8', 'not-a-net']}\n"
        "listeners:\n"
        "  - port: 2576\n"
        "    tls: {cert_file: /nonexistent.crt, key_file: /nonexistent.key}\n"
        "  - port: 2577\n"
        "    proxy_protocol: {trusted: []}\n"
        "    max_conections: 3\n"
    )
    _, diags = load_sources(tmp_path)
    text = [str(d) for d in diags]
    assert any(":3:" in t and "not-a-net" in t for t in text), text
    assert any(":6:" in t and "cert_file" in t for t in text), text
    assert any(":8:" in t and "trusted" in t for t in text), text
    assert any(":9:" in t and "max_conections" in t for t in text), text


def test_duplicate_port_and_unloadable_certificate(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    (tmp_path / "sources.yaml").write_text(
        "listeners:\n"
        "  - port: 2576\n"
        f"    tls: {{cert_file: {bad}, key_file: {bad}}}\n"
        "  - port: 2576\n"
    )
    sources, diags = load_sources(tmp_path)
    codes = {(d.code, d.line) for d in diags}
    assert ("tls-unusable", 3) in codes and ("duplicate-listener", 4) in codes


def test_address_matching_including_ipv4_mapped() -> None:
    nets = networks(["10.1.0.0/16", "2001:db8::/32"])
    assert address_in("10.1.2.3", nets) and address_in("::ffff:10.1.2.3", nets) and address_in("2001:db8::1", nets)
    assert not address_in("10.2.0.1", nets) and not address_in("garbage", nets)


def test_allow_list_keeps_msh3_from_choosing_a_source_the_address_may_not_use() -> None:
    epic = Source(name="epic", hl7=Hl7Settings(sending_application="EPIC", allow_from=["10.20.0.0/16"]))
    sources = Sources([epic])
    with sources.bind(None, "10.20.1.1"):
        assert sources.for_hl7(2575, "EPIC", None).name == "epic"
    with sources.bind(None, "192.0.2.9"):
        assert sources.for_hl7(2575, "EPIC", None).name == "default"
    with sources.bind("epic", "10.20.1.1"):  # bound by certificate or port: MSH-3 does not matter
        assert sources.for_hl7(2575, "OTHER", None).name == "epic"
    assert sources.for_hl7(2575, "EPIC", None).name == "epic"  # HTTP and tools: no connection bound


def test_proxy_header_v1_v2_and_garbage() -> None:
    v2 = (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + (12).to_bytes(2, "big")
          + bytes([10, 9, 8, 7]) + bytes([10, 0, 0, 1]) + (40000).to_bytes(2, "big") + (2575).to_bytes(2, "big"))
    assert parse_proxy_header(v2[:10]) is None
    assert parse_proxy_header(v2 + b"\x0bMSH") == parse_proxy_header(v2)
    h = parse_proxy_header(v2)
    assert h is not None and h.length == len(v2) and h.client == "10.9.8.7"
    local = b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20, 0x00]) + (0).to_bytes(2, "big")
    assert parse_proxy_header(local) == type(h)(16, None)
    v1 = parse_proxy_header(b"PROXY TCP6 2001:db8::5 2001:db8::1 4000 2575\r\n\x0b")
    assert v1 is not None and v1.client == "2001:db8::5"
    for bad in (b"\x0bMSH|", b"PROXY TCP4 1.2.3\r\n", b"PROXY " + b"1" * 120, b"GET / HTTP/1.1\r\n"):
        with pytest.raises(ProxyHeaderError):
            parse_proxy_header(bad)
