"""Rest-hook delivery from a real HAPI FHIR server to a real HTTP receiver.

Covers the three shapes careloop depends on: a payload-less POST (with the configured
Authorization header), a PUT ``{endpoint}/Appointment/{id}`` carrying the resource as
``application/fhir+json``, and a DELETE when the channel has HAPI's send-delete-messages
extension. Every wait is a deadline-bounded poll.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

pytestmark = [pytest.mark.hapi, pytest.mark.timeout(900)]

SEND_DELETE_EXT = "http://hapifhir.io/fhir/StructureDefinition/subscription-send-delete-messages"
FHIR_JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Records every request; ``wait_for`` polls with a deadline."""

    host: str
    port: int = 0
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def matching(self, pred: Callable[[Received], bool]) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if pred(r)]

    def wait_for(self, pred: Callable[[Received], bool], count: int = 1, deadline_s: float = 30) -> list[Received]:
        end = time.monotonic() + deadline_s
        while True:
            found = self.matching(pred)
            if len(found) >= count:
                return found
            if time.monotonic() > end:
                with self.lock:
                    seen = [(r.method, r.path) for r in self.requests]
                raise AssertionError(f"expected {count} matching request(s) within {deadline_s}s; got {seen}")
            time.sleep(0.05)


@pytest.fixture
def receiver(callback_hosts: tuple[str, str]) -> Iterator[Receiver]:
    bind_host, _ = callback_hosts
    rec = Receiver(host=bind_host)

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with rec.lock:
                rec.requests.append(Received(self.command, self.path, dict(self.headers.items()), body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_PUT = do_DELETE = _record

        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

    server = ThreadingHTTPServer((bind_host, 0), Handler)
    rec.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()


def _wait_active(client: httpx.Client, sub_id: str, deadline_s: float = 60) -> None:
    end = time.monotonic() + deadline_s
    status = None
    while time.monotonic() < end:
        status = client.get(f"Subscription/{sub_id}").json().get("status")
        if status == "active":
            return
        if status == "error":
            break
        time.sleep(0.2)
    raise AssertionError(f"Subscription/{sub_id} is {status!r}, not active")


def _appointment(marker: str) -> dict:
    return {
        "resourceType": "Appointment",
        "status": "booked",
        "description": f"resthook e2e {marker}",
        "start": "2030-01-02T10:00:00Z",
        "end": "2030-01-02T10:30:00Z",
        "participant": [{"actor": {"display": "Testpatient Resthook"}, "status": "accepted"}],
    }


def test_resthook_post_put_delete(hapi_base_url: str, receiver: Receiver, callback_hosts: tuple[str, str]) -> None:
    _, callback_host = callback_hosts
    tag = uuid.uuid4().hex[:10]
    root = f"http://{callback_host}:{receiver.port}"
    plain_path, payload_path = f"/plain-{tag}", f"/payload-{tag}"

    with httpx.Client(base_url=hapi_base_url.rstrip("/") + "/", headers=FHIR_JSON, timeout=30) as client:
        plain = client.post("Subscription", json={
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "careloop e2e: payload-less",
            "criteria": "Appointment?",
            "channel": {"type": "rest-hook", "endpoint": root + plain_path,
                        "header": ["Authorization: Bearer xyz"]},
        })
        assert plain.status_code == 201, plain.text
        with_payload = client.post("Subscription", json={
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "careloop e2e: full payload + deletes",
            "criteria": "Appointment?",
            "channel": {"type": "rest-hook", "endpoint": root + payload_path,
                        "payload": "application/fhir+json",
                        "extension": [{"url": SEND_DELETE_EXT, "valueBoolean": True}]},
        })
        assert with_payload.status_code == 201, with_payload.text
        sub_ids = [plain.json()["id"], with_payload.json()["id"]]
        try:
            for sid in sub_ids:
                _wait_active(client, sid)
            _prime(client, receiver, plain_path, payload_path)

            # --- create
            created = client.post("Appointment", json=_appointment(tag))
            assert created.status_code == 201, created.text
            appt = created.json()
            aid = appt["id"]
            put_path = f"{payload_path}/Appointment/{aid}"

            def plain_posts() -> Callable[[Received], bool]:
                return lambda r: r.method == "POST" and r.path == plain_path

            def puts(version: str) -> Callable[[Received], bool]:
                def pred(r: Received) -> bool:
                    if r.method != "PUT" or r.path != put_path:
                        return False
                    return json.loads(r.body)["meta"]["versionId"] == version
                return pred

            base_posts = len(receiver.matching(plain_posts()))
            receiver.wait_for(plain_posts(), count=base_posts + 1)
            put1 = receiver.wait_for(puts("1"))[0]

            # --- update
            appt["status"] = "cancelled"
            updated = client.put(f"Appointment/{aid}", json=appt)
            assert updated.status_code == 200, updated.text
            receiver.wait_for(plain_posts(), count=base_posts + 2)
            put2 = receiver.wait_for(puts("2"))[0]

            # --- delete
            deleted = client.delete(f"Appointment/{aid}")
            assert deleted.status_code in (200, 204), deleted.text
            delete = receiver.wait_for(lambda r: r.method == "DELETE" and r.path == put_path)[0]
        finally:
            for sid in sub_ids:
                client.delete(f"Subscription/{sid}")

    # Payload-less: POST to the endpoint itself, empty body, our header passed through.
    post = receiver.matching(plain_posts())[-1]
    assert post.body == b""
    assert post.headers.get("Authorization") == "Bearer xyz"

    # Full payload: PUT {endpoint}/Appointment/{id} with the resource as FHIR JSON.
    for put, status in ((put1, "booked"), (put2, "cancelled")):
        assert put.headers["Content-Type"].startswith("application/fhir+json")
        body = json.loads(put.body)
        assert body["resourceType"] == "Appointment" and body["id"] == aid
        assert body["status"] == status

    # Delete: DELETE {endpoint}/Appointment/{id}, no body.
    assert delete.body == b""


def _prime(client: httpx.Client, receiver: Receiver, plain_path: str, payload_path: str,
           deadline_s: float = 60) -> None:
    """Wait until both subscriptions are registered in HAPI's matcher, not just 'active'.

    'active' is written a moment before the in-memory registry picks the subscription up, so
    create warm-up Appointments until each endpoint has received one, then delete them (the
    delete notification is awaited so it cannot be mistaken for the real one later).
    """
    end = time.monotonic() + deadline_s
    warmups: list[str] = []
    try:
        while True:
            r = client.post("Appointment", json=_appointment("warm-up"))
            assert r.status_code == 201, r.text
            warmups.append(r.json()["id"])
            until = time.monotonic() + 3
            while time.monotonic() < until:
                got_plain = receiver.matching(lambda x: x.method == "POST" and x.path == plain_path)
                got_put = receiver.matching(lambda x: x.method == "PUT" and x.path.startswith(payload_path + "/"))
                if got_plain and got_put:
                    return
                time.sleep(0.05)
            if time.monotonic() > end:
                raise AssertionError("subscriptions never started delivering")
    finally:
        for wid in warmups:
            client.delete(f"Appointment/{wid}")
        for wid in warmups:
            receiver.wait_for(
                lambda x, wid=wid: x.method == "DELETE" and x.path == f"{payload_path}/Appointment/{wid}",
                deadline_s=30,
            )
