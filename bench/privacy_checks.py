"""CPU per trigger of the privacy checks for one claimed batch, at fire time (the scheduler's
``_Checks``: opt-outs, marketing authorization, deceased/hospice, consents, caps) and at send
time (``delivery.gate.send_time_blocks``), read-only, on a store of ``--patients`` patients of
which ``--merged`` per cent were merged (ADT^A40) and a few have opt-outs, authorizations and
Consents.

``python bench/privacy_checks.py [--batch 500] [--patients 20000] [--merged 5] [--rounds 40] [--database-url URL]``
"""
from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from sqlmodel import Session  # noqa: E402

from middleware.config.destinations import Destination  # noqa: E402
from middleware.delivery.gate import send_time_blocks  # noqa: E402
from middleware.storage.queries.scheduler import claim as claim_due  # noqa: E402
from middleware.storage.sql import unit  # noqa: E402
from middleware.rules.load import load_ruleset  # noqa: E402
from middleware.scheduler import runner  # noqa: E402
from middleware.storage.db import init_db, make_engine  # noqa: E402
from middleware.storage.tables import Authorization, ConsentRecord, PatientRow, Suppression, TriggerRow  # noqa: E402

NOW = datetime(2024, 6, 1, 16, tzinfo=timezone.utc)
T = NOW.timestamp()


def build(url: str, patients: int, merged_pct: int, batch: int) -> Any:
    engine = make_engine(url, synchronous="OFF") if url.startswith("sqlite") else make_engine(url)
    init_db(engine)
    with Session(engine) as s:
        for i in range(patients):
            pk = f"urn:mrn|P{i:06d}"
            s.add(PatientRow(key=pk, fhir_id=str(i), resource=orjson.dumps({"resourceType": "Patient", "id": str(i)}).decode()))
            if i % 100 < merged_pct:
                s.add(PatientRow(key=pk + "-old", fhir_id="", resource="{}", merged_into=pk))
            if i % 10 == 0:
                s.add(Suppression(patient_key=pk + ("-old" if i % 100 < merged_pct else ""), reason="STOP", created_at=T))
            if i % 4 == 0:
                s.add(Authorization(patient_key=pk, granted_at=T))
            if i % 8 == 0:
                consent = {"resourceType": "Consent", "id": f"c{i}", "status": "active",
                           "provision": {"type": "permit", "provision": [{"type": "deny", "actor": [
                               {"reference": {"reference": "Organization/elsewhere"}}]}]}}
                s.add(ConsentRecord(patient_key=pk, fhir_id=f"c{i}", status="active", resource=orjson.dumps(consent).decode(),
                                    received_at=T, updated_at=T))
        s.commit()
        step = max(1, patients // batch)
        for j in range(batch):
            i = j * step + j % step  # spread over the residues, so merged and opted-out patients come up
            s.add(TriggerRow(rule_id="noshow-reengagement", ruleset_version="v", name="n",
                             purpose="marketing" if j % 10 == 0 else "care-coordination", destinations="webhook",
                             patient_key=f"urn:mrn|P{i:06d}", resource_key=f"Appointment/{j}", origin_key=f"o{j}",
                             resource_version="1", due_at=T - 60, status="pending", message_kind="k", payload="{}",
                             created_at=T, updated_at=T))
        s.commit()
    return engine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--patients", type=int, default=20000)
    ap.add_argument("--merged", type=int, default=5, help="per cent of patients with a merged-away key")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--database-url", default="")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="careloop-privacy-")
    engine = build(a.database_url or f"sqlite:///{tmp}/p.db", a.patients, a.merged, a.batch)
    rs, _ = load_ruleset(REPO / "mappings")
    assert rs is not None
    dest = Destination(name="webhook", type="webhook", baa=True)
    takes_datetime = "at" in inspect.signature(runner._Checks.__init__).parameters  # main took ``now: float``
    fire: list[float] = []
    # what the delivery worker passes: the claimed trigger's status, patient key and purpose
    send: list[float] = []
    with unit(engine) as u:
        rows = claim_due(u, T, a.batch)  # the scheduler's own claim (named query "scheduler.claim")
        assert len(rows) == a.batch
        for _ in range(a.rounds):
            t0 = time.process_time()
            checks = runner._Checks(u, rows, rs, NOW if takes_datetime else T)
            verdicts = [checks.check(t) for t in rows]
            fire.append((time.process_time() - t0) / len(rows) * 1e6)
            t0 = time.process_time()
            items = [(SimpleNamespace(status="fired", patient_key=t.patient_key, purpose=t.purpose), dest) for t in rows]
            blocks = send_time_blocks(u, items, NOW)
            send.append((time.process_time() - t0) / len(rows) * 1e6)
    print(f"{engine.url.get_backend_name()}: batch {a.batch}, {a.patients} patients, {a.merged}% merged; "
          f"suppressed at fire {sum(v is not None for v in verdicts)}, blocked at send {sum(b is not None for b in blocks)}")
    for name, xs in (("fire-time checks", fire), ("send-time checks", send)):
        print(f"{name}: {statistics.median(xs):.1f} µs CPU per trigger (min {min(xs):.1f}, n={len(xs)})")
    engine.dispose()


if __name__ == "__main__":
    main()
