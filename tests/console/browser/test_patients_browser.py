"""The patient timeline in a real browser, against careloop fed over real MLLP: an auditor finds a
patient by MRN (a POST: no URL the browser requests carries it), reads the pseudonymous timeline
with the cancelled reminders and their reason, reveals the identifiers with a reason, and the
reveal is in the admin audit; an analyst gets no reveal control."""
from __future__ import annotations

import re
import socket
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from middleware.api import patients as api
from tests.support.hl7msgs import siu
from tests.support.server import InProcess

from .conftest import shot

MRN = "MRN850001"
START = datetime.now(timezone.utc) + timedelta(days=5)


def send_mllp(port: int, message: bytes) -> bytes:
    """One MLLP frame to careloop's listener; its ACK."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"\x0b" + message + b"\x1c\r")
        buf = b""
        while not buf.endswith(b"\x1c\r"):
            chunk = s.recv(65536)
            assert chunk, "connection closed before the ACK"
            buf += chunk
    return buf.strip(b"\x0b\x1c\r")


def booked_and_cancelled(srv: InProcess) -> str:
    """Book and cancel an appointment over MLLP; the patient's internal id once both are processed."""
    for m in (siu("S12", control="B1", mrn=MRN, appt="Z1", start=START),
              siu("S15", control="B2", mrn=MRN, appt="Z1", start=START, status="Cancelled")):
        ack = send_mllp(srv.mllp_port, m)
        assert b"MSA|AA" in ack, ack
    rt = srv.runtime
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ids = api.find_by_mrn(rt.engine, rt.sources, MRN)
        tl = api.timeline(rt.engine, ids[0]) if ids else None
        if tl and any(e.kind == "trigger" and e.status == "cancelled" for e in tl.entries):
            return ids[0]
        time.sleep(0.2)
    raise AssertionError("the cancellation was not processed in 30 s")


def test_auditor_reveals_with_a_reason_and_it_is_audited(signed_in: Callable[[str], Any], console_server: InProcess) -> None:
    pid = booked_and_cancelled(console_server)
    page = signed_in("aud")
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Patients").click()
    page.wait_for_url(console_server.http_url + "/patients")
    assert page.get_by_role("link", name=pid).is_visible()  # recently active, by internal id
    page.get_by_label("MRN", exact=True).fill(MRN)
    shot(page, "patients-auditor")
    page.get_by_role("button", name="Find by MRN").click()
    page.wait_for_url(console_server.http_url + f"/patients/{pid}")
    body = page.locator("main").inner_text()
    assert MRN not in body and "TESTPATIENT" not in body and "MRN and name hidden" in body
    cancelled = page.locator("table.timeline tr.k-trigger", has_text="cancelled")
    assert cancelled.count() >= 1
    assert "appointment.cancelled" in cancelled.first.inner_text()
    shot(page, "patients-timeline-auditor")

    # the reason is required: the browser will not submit an empty one
    page.get_by_role("button", name="Reveal identifiers").click()
    assert page.url == console_server.http_url + f"/patients/{pid}"
    page.get_by_label("Reason for revealing identifiers").fill("patient asked which reminders were sent")
    page.get_by_role("button", name="Reveal identifiers").click()
    revealed = page.get_by_role("region", name="Revealed identifiers")
    revealed.wait_for()
    text = revealed.inner_text()
    assert MRN in text and "HOSP" in text and "BRAVO TESTPATIENT" in text
    shot(page, "patients-reveal-auditor")
    assert not any(MRN in u for u in urls), [u for u in urls if MRN in u]
    stored = page.evaluate("() => [Object.keys(localStorage).length, document.cookie]")
    assert stored == [0, ""]

    # in the admin audit (the API an auditor's audit page reads), with who, what and why
    items = console_server.get("/api/admin-audit", params={"action": "console.reveal"})["items"]
    assert [(i["actor"], i["channel"], i["target_kind"], i["target_id"], i["reason"]) for i in items] == [
        ("aud", "console", "patient", pid, "patient asked which reminders were sent")]

    # reloading shows the pseudonymous page again
    page.goto(f"/patients/{pid}")
    assert MRN not in page.locator("main").inner_text()


def test_analyst_reads_the_timeline_without_a_reveal(signed_in: Callable[[str], Any], console_server: InProcess) -> None:
    pid = booked_and_cancelled(console_server)
    page = signed_in("ana")
    page.goto(f"/patients?q={pid}")
    page.wait_for_url(re.compile(re.escape(console_server.http_url) + f"/patients/{pid}$"))
    assert page.get_by_role("button", name="Reveal identifiers").count() == 0
    assert "needs the reveal permission" in page.locator("main").inner_text()
    assert MRN not in page.content()
    shot(page, "patients-timeline-analyst")
    page.set_viewport_size({"width": 820, "height": 1000})
    assert page.locator("table.timeline").is_visible()
    shot(page, "patients-timeline-tablet")
