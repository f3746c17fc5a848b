"""Synthetic stored messages for the console's tests (no real person: names and MRNs invented)."""
from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy.engine import Engine

from middleware.storage.queries.ingest import EVENT_COLUMNS, INBOX_COLUMNS
from middleware.storage.sql import unit

#: A synthetic ADT^A01 whose PID carries the identifiers the console must mask.
ADT = ("MSH|^~\\&|EPIC|HOSPA|CARELOOP|CL|20261206101500||ADT^A01|CTRL-FAIL-1|P|2.5\r"
       "EVN|A01|20261206101500\r"
       "PID|1||MRN0042^^^HOSPA^MR||QUINCEWORTH^ZELDA^M||19700314|F|||12 SYNTHETIC WAY^^TESTVILLE^TS^00000\r"
       "PV1|1|I|WARD7^101^A\r")
ACK = b"MSH|^~\\&|CARELOOP|CL|EPIC|HOSPA|20261206101501||ACK^A01|ACK-1|P|2.5\rMSA|AA|CTRL-FAIL-1\r"
PATIENT = ('{"resourceType":"Patient","id":"p-1","name":[{"family":"QUINCEWORTH","given":["ZELDA"]}],'
           '"birthDate":"1970-03-14","gender":"female"}')


def row(i: int, **over: Any) -> dict[str, Any]:
    raw = over.pop("raw", f"MSH|^~\\&|EPIC|HOSPA|CARELOOP|CL|20261206||ADT^A08|CTRL-{i}|P|2.5\rEVN|A08\r".encode())
    base = {"source": "epic", "channel": "mllp", "received_at": 1_765_000_000.0 + i, "raw": raw,
            "sha256": hashlib.sha256(raw).hexdigest(), "dedup_key": None, "control_id": f"CTRL-{i}",
            "message_type": "ADT^A08", "status": "processed", "error": None, "ack": None, "meta": None}
    base.update(over)
    return base


def seed(engine: Engine, n: int = 120) -> dict[str, int]:
    """``n`` processed ADT^A08 from ``epic``, then one failed ADT^A01 (with its ACK and an event) and one
    FHIR Patient notification; the ids of the last two."""
    rows = [row(i) for i in range(n)]
    rows.append(row(n, raw=ADT.encode(), control_id="CTRL-FAIL-1", message_type="ADT^A01", status="failed",
                    error="normalize: no PV1-19 visit number", ack=ACK))
    rows.append(row(n + 1, raw=PATIENT.encode(), channel="fhir", source="hapi", control_id=None, message_type="Patient"))
    with unit(engine, write=True) as u:
        u.many("inbox.insert", [{c: r[c] for c in INBOX_COLUMNS} for r in rows])
    with unit(engine) as u:
        from middleware.storage.queries import operator as q
        newest = q.messages(u, limit=2)
    fhir_id, failed_id = newest[0].id, newest[1].id
    event = {"type": "encounter.started", "previous_status": None, "status": "in-progress", "resource_type": "Encounter",
             "resource_key": "Encounter/e-1", "patient_key": "urn:hospa|MRN0042", "resource": "{}", "source": "epic",
             "arrival": "message", "occurred_at": 1_765_000_000.0, "created_at": 1_765_000_000.0, "inbound_id": failed_id,
             "patient_id": "pt_SYNTHETICPATIENT0000000001"}
    with unit(engine, write=True) as u:
        u.scalar("ingest.event_insert", **{c: event[c] for c in EVENT_COLUMNS})
    return {"failed": failed_id, "fhir": fhir_id}
