"""The demo runs twice (issue 11, item 8): ``sandbox up, seed, scenario, down, up, seed,
scenario`` through the real CLI against the real HAPI (java runtime), in a scratch directory
with its own ports. The second ``seed`` used to print "seeded 107 synthetic resources" and
then hang forever (the worker loops ignored their cancellation, see
``tests/sandbox/test_worker_cancel.py``). Also checks that HAPI listens on loopback only.

Takes about 2 x (HAPI start-up ~35 s + seed ~5 s + scenario ~10 s) on this machine, reusing
the launcher jar already built in ``sandbox/hapi/target``.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from middleware.sandbox import hapi
from middleware.sandbox.local import free_port

pytestmark = [pytest.mark.hapi, pytest.mark.slow, pytest.mark.timeout(900)]  # two HAPI start-ups
ROOT = Path(__file__).resolve().parents[2]


def _listen_addresses(port: int) -> set[str]:
    """Local addresses of LISTEN sockets on ``port`` (from /proc/net/tcp and tcp6)."""
    out: set[str] = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, _, hexport = local.partition(":")
            if state != "0A" or int(hexport, 16) != port:
                continue
            raw = bytes.fromhex(addr)
            if name == "tcp":
                out.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
            else:  # four little-endian 32-bit words
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                out.add(socket.inet_ntop(socket.AF_INET6, words))
    return out


def test_up_seed_scenario_down_up_seed_scenario(tmp_path: Path) -> None:
    if not hapi.java_toolchain_available():
        reason = "the sandbox twice test needs Java 17+ and Maven (mvn)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so the HAPI end-to-end tests must run)")
        pytest.skip(reason)
    hapi_port, careloop_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CARELOOP_SANDBOX_RUNTIME": "java"}
    env.pop("CARELOOP_FHIR_TOKEN_DEFAULT", None)
    timings: list[tuple[str, float]] = []

    def cli(*args: str, timeout: float = 420) -> subprocess.CompletedProcess[str]:
        t0 = time.monotonic()
        res = subprocess.run([sys.executable, "-m", "middleware", "sandbox", *args], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=timeout)
        timings.append((args[0], round(time.monotonic() - t0, 1)))
        assert res.returncode == 0, f"sandbox {' '.join(args)} -> {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        assert "Traceback" not in res.stderr
        return res

    careloop = ["--careloop-url", f"http://127.0.0.1:{careloop_port}"]
    try:
        for run in (1, 2):
            cli("up", "--port", str(hapi_port))
            listening = _listen_addresses(hapi_port)
            assert listening and listening <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, listening
            seeded = cli("seed", *careloop, "--mappings", str(ROOT / "mappings"), timeout=240)
            assert "seeded 107 synthetic resources" in seeded.stdout
            assert "backfilled careloop" in seeded.stdout and "subscriptions active" in seeded.stdout
            if run == 2:  # a new HAPI run is a new server: the first run's database was moved aside
                assert "moved it to" in seeded.stdout
                assert len(list((tmp_path / ".careloop" / "sandbox").glob("careloop.*.db"))) == 1
            shown = cli("scenario", "book-then-no-show", *careloop, timeout=300)
            assert "every step confirmed end to end" in shown.stdout
            if run == 1:
                cli("down")
    finally:
        subprocess.run([sys.executable, "-m", "middleware", "sandbox", "down"], cwd=tmp_path, env=env,
                       capture_output=True, timeout=120)
        print("timings (s):", timings)
    assert hapi.running(tmp_path / ".careloop" / "sandbox") is None
