"""docker-compose.yml is valid Compose, and its HAPI settings match the Java launcher's."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
APP_YAML = ROOT / "sandbox" / "hapi" / "src" / "main" / "resources" / "application.yaml"
POM = ROOT / "sandbox" / "hapi" / "pom.xml"


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: this check must run in CI)")
    pytest.skip(reason)


def _hapi_env() -> dict[str, str]:
    svc = yaml.safe_load(COMPOSE.read_text())["services"]["hapi"]
    env = svc.get("environment", {})
    if isinstance(env, list):  # "KEY=value" list form
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _app_yaml_get(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        node = node[part]
    return node


def test_docker_compose_v1_accepts_file() -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        _skip_or_fail("docker-compose binary not installed (Debian: apt-get install docker-compose)")
    res = subprocess.run(
        [exe, "-f", str(COMPOSE), "config"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    rendered = yaml.safe_load(res.stdout)
    assert {"hapi", "postgres", "careloop", "sink"} <= set(rendered["services"])


def test_careloop_healthcheck_uses_healthz() -> None:
    """Compose v1 ('docker-compose config', above) is the required check; Compose v2 is not
    packaged on Debian, so there is no v2 test (tests never skip under CI). The careloop
    service must be reported healthy only when its HTTP API answers GET /healthz."""
    rendered = yaml.safe_load(COMPOSE.read_text())
    test = " ".join(rendered["services"]["careloop"]["healthcheck"]["test"])
    assert "/healthz" in test and "8080" in test


def test_hapi_settings_match_launcher() -> None:
    env = _hapi_env()
    app = yaml.safe_load(APP_YAML.read_text())

    pairs = {
        "hapi.fhir.fhir_version": "R4",
        "hapi.fhir.subscription.resthook_enabled": "true",
        "hapi.fhir.subscription.polling_interval_ms": "1000",
        "hapi.fhir.subscription.immediately_queued": "true",
    }
    for key, expected in pairs.items():
        assert env.get(key, "").lower() == expected.lower(), f"compose {key}={env.get(key)!r}"
        assert str(_app_yaml_get(app, key)).lower() == expected.lower(), f"application.yaml {key}"

    # Same allow-external-references choice on both sides.
    assert env["hapi.fhir.allow_external_references"].lower() == str(
        _app_yaml_get(app, "hapi.fhir.allow_external_references")
    ).lower()

    # Dialects: H2 for the launcher, Postgres for compose; both HAPI's own dialect classes.
    assert app["spring"]["jpa"]["properties"]["hibernate"]["dialect"] == (
        "ca.uhn.fhir.jpa.model.dialect.HapiFhirH2Dialect"
    )
    assert env["SPRING_JPA_PROPERTIES_HIBERNATE_DIALECT"] == (
        "ca.uhn.fhir.jpa.model.dialect.HapiFhirPostgresDialect"
    )
    assert env["SPRING_DATASOURCE_URL"].startswith("jdbc:postgresql://postgres:5432/hapi")
    assert app["spring"]["main"]["allow-circular-references"] is True
    assert app["server"]["port"] == 8090


def test_hapi_versions_and_ports_consistent() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    hapi = compose["services"]["hapi"]
    # the launcher itself, built (the stock image's R4 config lacks SubscriptionTopicConfig: starter #964)
    m = re.fullmatch(r"careloop/hapi-sandbox:(\d+\.\d+\.\d+)", hapi["image"])
    assert m, hapi["image"]
    assert hapi["build"]["context"] == "./sandbox/hapi"
    dockerfile = (POM.parent / "Dockerfile").read_text()
    assert "careloop-hapi-sandbox.jar" in dockerfile and "SERVER_PORT=8080" in dockerfile

    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    props = ET.parse(POM).getroot().find("m:properties", ns)
    assert props is not None
    assert props.findtext("m:hapi.version", namespaces=ns) == m.group(1)
    assert props.findtext("m:spring-boot.version", namespaces=ns).startswith("3.5.")

    assert hapi["ports"] == ["${CARELOOP_SANDBOX_BIND:-127.0.0.1}:${CARELOOP_SANDBOX_PORT:-8090}:8080"]
    assert hapi["environment"]["SERVER_ADDRESS"] == "0.0.0.0"  # inside the container: all its interfaces
    assert "host.docker.internal:host-gateway" in hapi["extra_hosts"]
    careloop = compose["services"]["careloop"]
    assert careloop["environment"]["CARELOOP_FHIR_BASE_URL"] == "http://hapi:8080/fhir"
    assert "CARELOOP_FHIR_TOKEN_DEFAULT" in careloop["environment"]
    assert compose["services"]["postgres"]["image"] == "postgres:16-alpine"


def test_every_published_port_is_on_loopback() -> None:
    """Sandbox credentials and an unauthenticated HAPI: nothing is published beyond 127.0.0.1."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    published = [(name, p) for name, svc in services.items() for p in svc.get("ports") or []]
    assert published
    for name, port in published:
        m = re.fullmatch(r"(\$\{[^}]*\}|[^:]+):(\$\{[^}]*\}|[^:]+):(\d+)", str(port))
        host = m.group(1) if m else ""  # "HOST:PORT:CONTAINER_PORT"; a bare "PORT:CONTAINER_PORT" is all interfaces
        assert host in ("127.0.0.1", "${CARELOOP_SANDBOX_BIND:-127.0.0.1}"), f"{name} publishes {port} on all interfaces"


def test_launcher_binds_loopback_by_default() -> None:
    """The java runtime passes --server.address (default 127.0.0.1); the jar's own default agrees."""
    from middleware.sandbox import hapi

    app = yaml.safe_load(APP_YAML.read_text())
    assert app["server"]["address"] == "127.0.0.1"
    cmd = hapi.java_command("java", Path("x.jar"), 8090, hapi.DEFAULT_BIND, "r1")
    assert "--server.address=127.0.0.1" in cmd and "--careloop.sandbox.run-id=r1" in cmd
    assert hapi.base_url_for(8090, "0.0.0.0") == "http://127.0.0.1:8090/fhir"
    assert hapi.base_url_for(8091, "::1") == "http://[::1]:8091/fhir"


def test_compose_publishes_no_default_secret() -> None:
    """careloop services serve beyond loopback inside the compose network, so they take their
    secrets from the environment / .env (`careloop secrets init`) and name no default value."""
    text = COMPOSE.read_text()
    for svc in yaml.safe_load(text)["services"].values():
        env = svc.get("environment") or {}
        for name, value in (env.items() if isinstance(env, dict) else ()):
            if any(k in name for k in ("TOKEN", "SECRET")) and name.startswith("CARELOOP_"):
                assert str(value) == "${" + name + ":-}", (name, value)


def test_secrets_init_writes_strong_secrets_once(tmp_path: Path) -> None:
    import stat

    from middleware.cli import main
    from middleware.cli.secrets import GENERATED
    from middleware.cli._secrets import weak_secrets
    from middleware.cli.sink import DEV_WEBHOOK_SECRET
    from middleware.settings import Settings

    env = tmp_path / ".env"
    env.write_text("CARELOOP_API_TOKEN=" + "k" * 40 + "\n")
    assert main(["secrets", "init", "--env-file", str(env)]) == 0
    first = env.read_text()
    values = dict(line.split("=", 1) for line in first.splitlines() if line and not line.startswith("#"))
    assert set(values) == set(GENERATED) and values["CARELOOP_API_TOKEN"] == "k" * 40  # kept
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    settings = Settings(api_token=values["CARELOOP_API_TOKEN"], contact_key_secrets=values["CARELOOP_CONTACT_KEY_SECRETS"])
    assert weak_secrets(settings, values["CARELOOP_WEBHOOK_SECRET"], DEV_WEBHOOK_SECRET) == []
    assert main(["secrets", "init", "--env-file", str(env)]) == 0
    assert env.read_text() == first  # idempotent: nothing regenerated
