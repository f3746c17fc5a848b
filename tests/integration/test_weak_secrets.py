"""No network serving on weak secrets: ``serve`` and ``worker`` beyond loopback refuse the
published development secrets and short API tokens, one line each naming the variable and
how to generate a value, exit 2, no traceback; loopback keeps the development defaults."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from middleware.cli.sink import DEV_WEBHOOK_SECRET
from middleware.delivery.signing import generate_secret
from tests.support.server import REPO, free_port, start_subprocess

CLI = [sys.executable, "-m", "middleware"]
GOOD_TOKEN = "a-synthetic-api-token-of-43-characters-xxxx"
GOOD_CK = "a-synthetic-contact-secret-of-enough-length"


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CARELOOP_")}
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={**clean, "PYTHONPATH": str(REPO), **env})


def serve_args(tmp_path: Path, mappings: Path, host: str = "0.0.0.0") -> list[str]:
    return ["serve", "--http-host", host, "--http-port", str(free_port()), "--mllp-port", str(free_port()),
            "--database-url", f"sqlite:///{tmp_path}/w.db", "--mappings", str(mappings)]


def assert_refused(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == len(needles), lines
    for line, needle in zip(lines, needles):
        assert needle in line and "generate one with:" in line and "secrets." in line, line


def test_serve_beyond_loopback_refuses_development_secrets_and_short_token(tmp_path: Path, mappings_dir: Path) -> None:
    r = run([*serve_args(tmp_path, mappings_dir), "--api-token", "x"], {}, tmp_path)
    assert_refused(r, "CARELOOP_WEBHOOK_SECRET", "CARELOOP_API_TOKEN", "CARELOOP_CONTACT_KEY_SECRET (v1)")
    assert "shorter than 32 characters" in r.stderr and "published development secret" in r.stderr


def test_each_weak_secret_is_named_alone(tmp_path: Path, mappings_dir: Path) -> None:
    good = {"CARELOOP_WEBHOOK_SECRET": generate_secret(), "CARELOOP_API_TOKEN": GOOD_TOKEN,
            "CARELOOP_CONTACT_KEY_SECRET": GOOD_CK}
    cases = {
        "CARELOOP_WEBHOOK_SECRET": {"CARELOOP_WEBHOOK_SECRET": DEV_WEBHOOK_SECRET},
        "CARELOOP_API_TOKENS entry 'bob'": {"CARELOOP_API_TOKENS": "bob:short-token"},
        "CARELOOP_CONTACT_KEY_SECRETS (v1)": {"CARELOOP_CONTACT_KEY_SECRETS": f"v2:{GOOD_CK}x,v1:tiny:2099-01-01"},
    }
    for needle, bad in cases.items():
        r = run(serve_args(tmp_path, mappings_dir), {**good, **bad}, tmp_path)
        assert_refused(r, needle)
    # an MLLP host beyond loopback is network mode too
    r = run([*serve_args(tmp_path, mappings_dir, host="127.0.0.1"), "--mllp-host", "0.0.0.0"],
            {**good, "CARELOOP_CONTACT_KEY_SECRET": "careloop-dev-contact-key-secret"}, tmp_path)
    assert_refused(r, "CARELOOP_CONTACT_KEY_SECRET (v1)")


def test_worker_against_a_network_database_refuses_development_secrets(tmp_path: Path, mappings_dir: Path) -> None:
    r = run(["worker", "--database-url", "postgresql://careloop@10.0.0.5/careloop", "--mappings", str(mappings_dir)],
            {"CARELOOP_API_TOKEN": GOOD_TOKEN}, tmp_path)
    assert_refused(r, "CARELOOP_WEBHOOK_SECRET", "CARELOOP_CONTACT_KEY_SECRET (v1)")


def test_malformed_contact_key_secrets_are_one_line_even_on_loopback(tmp_path: Path, mappings_dir: Path) -> None:
    r = run(serve_args(tmp_path, mappings_dir, host="127.0.0.1"),
            {"CARELOOP_CONTACT_KEY_SECRETS": f"v2:{GOOD_CK},v1:{GOOD_CK}y"}, tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "last day" in r.stderr


def test_loopback_keeps_the_development_defaults(tmp_path: Path, mappings_dir: Path, db_url: str) -> None:
    env = {k: "" for k in ("CARELOOP_WEBHOOK_SECRET", "CARELOOP_CONTACT_KEY_SECRET", "CARELOOP_API_TOKEN")}
    saved = {k: os.environ.pop(k, None) for k in env}
    try:
        sp = start_subprocess(db_url, mappings_dir, tmp_path, env={"PYTHONPATH": str(REPO)})
        try:
            assert httpx.get(sp.http_url + "/healthz", timeout=5).status_code == 200
        finally:
            sp.terminate()
    finally:
        for k, v in saved.items():
            if v is not None:
                os.environ[k] = v


@pytest.mark.parametrize("token", [GOOD_TOKEN])
def test_strong_secrets_start_beyond_loopback(tmp_path: Path, mappings_dir: Path, token: str) -> None:
    args = serve_args(tmp_path, mappings_dir)
    env = {"CARELOOP_WEBHOOK_SECRET": generate_secret(), "CARELOOP_API_TOKEN": token,
           "CARELOOP_CONTACT_KEY_SECRETS": f"v2:{GOOD_CK}2,v1:{GOOD_CK}1:2099-12-31",
           "CARELOOP_TRUSTED_PROXIES": "10.0.0.1"}  # plain HTTP beyond loopback only behind a TLS proxy (or with TLS)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CARELOOP_")}
    proc = subprocess.Popen([*CLI, *args], cwd=tmp_path, env={**clean, "PYTHONPATH": str(REPO), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""  # the "careloop serving" line
        assert "careloop serving" in line, line
    finally:
        proc.terminate()
        proc.wait(timeout=15)
