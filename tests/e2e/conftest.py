"""Fixtures for end-to-end tests against a real HAPI FHIR sandbox.

``hapi_base_url`` (session) reuses the server at ``CARELOOP_SANDBOX_URL`` when set; otherwise
it builds and starts one through ``middleware.sandbox.hapi`` (Java 17 + Maven, or a running
Docker engine) and stops it at the end if it started it. Without either runtime the tests
are skipped, except under ``CI`` where that is a failure.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from middleware.sandbox import hapi

START_DEADLINE_S = 420  # first run may build the launcher; start-up itself is ~25 s here


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the HAPI end-to-end tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def hapi_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[hapi.SandboxHandle]:
    """A ready HAPI sandbox; started (and later stopped) here unless one is given or already up."""
    given = os.environ.get("CARELOOP_SANDBOX_URL")
    if given:
        base = given.rstrip("/")
        try:
            hapi.wait_ready(base, deadline_s=START_DEADLINE_S)
        except hapi.SandboxError as exc:
            pytest.fail(f"CARELOOP_SANDBOX_URL={given} is not a ready FHIR server: {exc}")
        yield hapi.SandboxHandle(base, None, Path(os.devnull), None, reused=True)
        return

    runtime = hapi.detect_runtime()
    if runtime is None:
        _skip_or_fail(
            "no HAPI sandbox runtime: need Java 17+ with Maven ('mvn'), or a running Docker engine; "
            "or set CARELOOP_SANDBOX_URL to a running server"
            + (f" (CARELOOP_SANDBOX_RUNTIME={os.environ['CARELOOP_SANDBOX_RUNTIME']} is forced)"
               if os.environ.get("CARELOOP_SANDBOX_RUNTIME") else "")
        )
    port = int(os.environ.get("CARELOOP_SANDBOX_PORT", hapi.DEFAULT_PORT))
    workdir = tmp_path_factory.mktemp("hapi-sandbox")
    try:
        handle = hapi.start(port=port, workdir=workdir, runtime=runtime, deadline_s=START_DEADLINE_S,
                            adopt_foreign=True)
    except hapi.SandboxError as exc:
        pytest.fail(f"could not start the HAPI sandbox ({runtime}): {exc}")
    try:
        yield handle
    finally:
        if not handle.reused:
            hapi.stop(workdir)


@pytest.fixture(scope="session")
def hapi_base_url(hapi_sandbox: hapi.SandboxHandle) -> str:
    """FHIR base URL of the ready sandbox, e.g. ``http://127.0.0.1:8090/fhir``."""
    return hapi_sandbox.base_url


@pytest.fixture(scope="session")
def callback_hosts(hapi_sandbox: hapi.SandboxHandle) -> tuple[str, str]:
    """(address our receivers bind to, host name HAPI should call back).

    The Java sandbox shares our loopback. A HAPI container reaches the host through
    ``host.docker.internal`` (compose maps it to the host gateway), so receivers then bind all
    interfaces. ``CARELOOP_SANDBOX_CALLBACK_HOST`` overrides the callback host name.
    """
    override = os.environ.get("CARELOOP_SANDBOX_CALLBACK_HOST")
    if override:
        return ("127.0.0.1" if override in ("127.0.0.1", "localhost") else "0.0.0.0", override)
    if hapi_sandbox.runtime == "docker":
        return ("0.0.0.0", "host.docker.internal")
    return ("127.0.0.1", "127.0.0.1")


# --------------------------------------------------------------------------- careloop + sink
# A real careloop (in-process, loopback, SQLite) with the demo mappings and a webhook sink,
# for the scenario tests. Subscriptions get per-test ids so parallel sessions never collide.

@pytest.fixture
def careloop_factory(hapi_base_url: str, tmp_path: Path, callback_hosts: tuple[str, str]) -> Iterator[Any]:
    """``make(port=None, database_url=None, mappings_src=None) -> LocalCareloop``; all stopped at the end."""
    from middleware.sandbox.local import LocalCareloop

    started: list[LocalCareloop] = []
    bind_host, _ = callback_hosts
    if bind_host != "127.0.0.1":
        pytest.skip("scenario tests run careloop on loopback; a HAPI container cannot reach it (use the Java runtime)")

    def make(port: int | None = None, database_url: str | None = None, mappings_src: Path | None = None,
             token: str = "e2e-token") -> LocalCareloop:
        n = len(started)
        cl = LocalCareloop.start(fhir_base=hapi_base_url, workdir=tmp_path / f"careloop-{n}", token=token, port=port,
                                 database_url=database_url or f"sqlite:///{tmp_path}/careloop.db",
                                 mappings_src=mappings_src)
        started.append(cl)
        return cl

    try:
        yield make
    finally:
        for cl in reversed(started):
            cl.stop()


@pytest.fixture
def hapi_client(hapi_base_url: str) -> Iterator[Any]:
    import httpx

    with httpx.Client(base_url=hapi_base_url.rstrip("/") + "/", timeout=30) as c:
        yield c


# --------------------------------------------------------------------------- CI: hapi tests must run
_HAPI_PASSED = 0


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    global _HAPI_PASSED
    if report.when == "call" and report.passed and "hapi" in report.keywords:
        _HAPI_PASSED += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under ``CI``, a run that collected tests/e2e but passed no ``hapi`` test fails.

    Selecting other tests only (``pytest tests/unit``, ``-m 'not hapi'``) never loads this
    conftest's tests, so the check applies exactly when e2e tests were part of the run.
    """
    if not os.environ.get("CI"):
        return
    e2e = [i for i in session.items if "tests/e2e/" in i.nodeid.replace("\\", "/") or i.nodeid.startswith("e2e/")]
    hapi_selected = [i for i in e2e if i.get_closest_marker("hapi")]
    if e2e and hapi_selected and _HAPI_PASSED == 0 and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("CI: no 'hapi' end-to-end test passed (all skipped or deselected): failing the run",
                                red=True, bold=True)
