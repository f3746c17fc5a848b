"""Outbound URLs are checked when destinations.yaml and sources.yaml load, with file:line diagnostics."""
from __future__ import annotations

from pathlib import Path

import pytest

from middleware.config.destinations import load_destinations
from middleware.config.sources import load_sources
from middleware.rules.load import load_ruleset

REPO = Path(__file__).resolve().parents[2]


def _dest(tmp_path: Path, url: str, *, allow: bool | None = None, extra_config: str = "") -> list[str]:
    flag = f"    allow_private_network: {str(allow).lower()}\n" if allow is not None else ""
    (tmp_path / "destinations.yaml").write_text(
        "destinations:\n"
        "  - name: hook\n"
        "    type: webhook\n"
        "    baa: true\n"
        f"{flag}"
        "    config:\n"
        f"      url: \"{url}\"\n"
        "      secret_env: HOOK_SECRET\n"
        f"{extra_config}"
    )
    _, diags, _ = load_destinations(tmp_path)
    return [str(d) for d in diags]


def _source(tmp_path: Path, base_url: str, *, allow: bool = False, more: str = "") -> list[str]:
    (tmp_path / "sources.yaml").write_text(
        "sources:\n"
        "  - name: ehr\n"
        "    kind: fhir\n"
        "    fhir:\n"
        f"      base_url: \"{base_url}\"\n"
        f"      allow_private_network: {str(allow).lower()}\n"
        f"{more}"
    )
    _, diags = load_sources(tmp_path)
    return [str(d) for d in diags]


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://2852039166/",
                                 "http://[::ffff:169.254.169.254]/", "http://0251.0376.0251.0376/",
                                 "http://metadata.google.internal/computeMetadata/v1/", "http://[fd00:ec2::254]/"])
def test_webhook_to_metadata_refused_even_with_the_allowance(tmp_path: Path, url: str) -> None:
    diags = _dest(tmp_path, url, allow=True)
    assert len(diags) == 1
    assert diags[0].startswith(f"{tmp_path / 'destinations.yaml'}:7:") and "error[outbound-url]" in diags[0]
    assert "always refused" in diags[0]


def test_webhook_on_loopback_needs_the_explicit_allowance(tmp_path: Path) -> None:
    diags = _dest(tmp_path, "http://127.0.0.1:9000/hooks")
    assert len(diags) == 1 and "allow_private_network" in diags[0] and ":6:" in diags[0]
    assert _dest(tmp_path, "http://127.0.0.1:9000/hooks", allow=True) == []


def test_webhook_at_careloops_own_api_refused_even_with_the_allowance(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CARELOOP_HTTP_PORT", raising=False)
    diags = _dest(tmp_path, "http://127.0.0.1:8080/api/mappings/reload", allow=True)
    assert len(diags) == 1 and "careloop's own listener" in diags[0]
    monkeypatch.setenv("CARELOOP_HTTP_PORT", "8181")
    assert _dest(tmp_path, "http://localhost:8181/api/x", allow=True) != []
    assert _dest(tmp_path, "http://localhost:8080/api/x", allow=True) == []


@pytest.mark.parametrize("url", ["file:///etc/", "ftp://hooks.example.org/"])
def test_webhook_scheme_must_be_http(tmp_path: Path, url: str) -> None:
    assert _dest(tmp_path, url, allow=True) != []


@pytest.mark.parametrize("url", ["file:///etc/", "ftp://fhir.example.org/r4", "gopher://fhir.example.org/"])
def test_fhir_base_url_is_http_or_https_only(tmp_path: Path, url: str) -> None:
    diags = _source(tmp_path, url, allow=True)
    assert len(diags) == 1 and "http or https only" in diags[0]
    assert diags[0].startswith(f"{tmp_path / 'sources.yaml'}:5:")


def test_fhir_base_url_private_needs_allowance_metadata_never(tmp_path: Path) -> None:
    assert "allow_private_network" in _source(tmp_path, "http://10.20.0.5/fhir")[0]
    assert _source(tmp_path, "http://10.20.0.5/fhir", allow=True) == []
    assert "always refused" in _source(tmp_path, "http://169.254.169.254/fhir", allow=True)[0]


def test_credential_hosts_and_token_url_are_checked_too(tmp_path: Path) -> None:
    more = ("      credential_hosts: [\"https://files.example.org\", \"http://169.254.169.254\"]\n"
            "      auth: {kind: client-credentials, client_id: x, token_url: \"ftp://auth.example.org/token\"}\n")
    diags = _source(tmp_path, "https://fhir.example.org/r4", more=more)
    assert len(diags) == 2
    assert any("credential_hosts" in d and "always refused" in d for d in diags)
    assert any("token_url" in d and "http or https only" in d for d in diags)


def test_bundled_mappings_still_load(tmp_path: Path) -> None:
    """The loopback sink and the local sandbox source say so explicitly and keep working."""
    rs, diags = load_ruleset(REPO / "mappings")
    assert rs is not None, [str(d) for d in diags]
    assert rs.destinations["webhook"].allow_private_network is True
    src = rs.sources.get("default")
    assert src is not None and src.fhir.allow_private_network is True
