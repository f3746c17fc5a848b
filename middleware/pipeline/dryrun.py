"""Dry runs for analysts: push messages or resources through the real pipeline on a
throw-away database with a simulated clock, and report every rule's decision."""
from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

from ..model import InboundItem, ResourceChange
from ..rules.load import RuleSet
from ..storage.queries import dryrun as dq, privacy as pq
from ..storage.queries.operator import TriggerRecord
from ..storage.schema import open_database
from ..storage.sql import unit
from ..storage.statuses import InboundStatus
from ..scheduler.runner import Scheduler
from .changes import ChangeResult, apply_change, upsert_patient
from .process import handle_hl7


@dataclass
class Step:
    label: str
    at: datetime
    result: ChangeResult
    error: str | None = None
    resources: list[dict[str, Any]] = field(default_factory=list)


def is_hl7(data: bytes) -> bool:
    return data.lstrip(b"\x0b\xef\xbb\xbf \r\n").startswith(b"MSH")


def fhir_change(resource: dict[str, Any], source: str, at: datetime) -> ResourceChange:
    """A FHIR resource (R4, or R4B/R5 converted) as a change from a notification."""
    try:
        from ..normalize.fhir import patient_key_from_reference, to_r4

        resource = to_r4(resource)
        pkey = patient_key_from_reference(resource, source)
    except ImportError:  # pragma: no cover - before the FHIR module exists
        ref = ((resource.get("subject") or resource.get("patient") or {}).get("reference")) or next(
            (p["actor"]["reference"] for p in resource.get("participant") or []
             if str(p.get("actor", {}).get("reference", "")).startswith("Patient/")), None)
        pkey = f"{source}|{ref}" if ref else None
    last = (resource.get("meta") or {}).get("lastUpdated")
    occurred = at
    if last:
        try:
            occurred = datetime.fromisoformat(last.replace("Z", "+00:00"))
        except ValueError:
            pass
    return ResourceChange(resource=resource, previous=None, patient_key=pkey, source=source, arrival="notification", occurred_at=occurred)


class DryRun:
    """A scratch database plus the current rule set; feed inputs in order."""

    def __init__(self, rs: RuleSet, now: datetime | None = None) -> None:
        self.rs = rs
        self.now = now or datetime.now(timezone.utc)
        self._dir = tempfile.TemporaryDirectory(prefix="careloop-dryrun-")
        self.engine = open_database(f"sqlite:///{self._dir.name}/dry.db", synchronous="OFF")
        self.steps: list[Step] = []

    def close(self) -> None:
        self.engine.dispose()
        self._dir.cleanup()

    def advance(self, delta: timedelta) -> None:
        self.now += delta

    def feed(self, data: bytes, label: str, source: str = "default") -> Step:
        with unit(self.engine, write=True) as u:
            if is_hl7(data):
                raw = data.lstrip(b"\x0b").split(b"\x1c")[0]
                msg_id = dq.inbox_add(u, source=source, channel="mllp", received_at=self.now.timestamp(), raw=raw,
                                      sha256=hashlib.sha256(raw).hexdigest(), dedup_key=None, control_id=None,
                                      message_type=None, status=InboundStatus.RECEIVED, error=None, ack=None, meta=None)
                try:
                    item = InboundItem(msg_id, source, "mllp", raw, None)
                    res = handle_hl7(u, item, self.rs, self.now)
                    err = None
                except Exception as exc:
                    res, err = ChangeResult(), f"{type(exc).__name__}: {exc}"
            else:
                doc = orjson.loads(data)
                res, err = ChangeResult(), None
                items = [e.get("resource") for e in doc.get("entry", [])] if doc.get("resourceType") == "Bundle" else [doc]
                for r in items:
                    if r and r.get("resourceType") == "Patient":
                        upsert_patient(u, f"{source}|Patient/{r.get('id')}", r, self.now.timestamp(), self.now.timestamp())
                        continue
                    if not r or r.get("resourceType") not in ("Appointment", "Encounter", "CarePlan"):
                        continue
                    try:
                        one = apply_change(u, fhir_change(r, source, self.now), self.rs, now=self.now)
                    except Exception as exc:
                        err = f"{type(exc).__name__}: {exc}"
                        continue
                    res.events += one.events
                    res.decisions += one.decisions
                    res.cancelled += one.cancelled
                    res.triggers += one.triggers
        step = Step(label=label, at=self.now, result=res, error=err)
        self.steps.append(step)
        return step

    def record(self, kind: str, patient_key: str, data: dict[str, Any]) -> str:
        """Record (or revoke) a privacy fact at the simulated clock, as the privacy API does:
        ``authorization``, ``opt_out`` (a suppression row), ``consent`` (a FHIR Consent), or
        ``revoke`` with ``data = {"what": authorization | opt_out | consent}`` (the patient's
        most recent active one). Returns a one-line description for the timeline."""
        ts = self.now.timestamp()
        with unit(self.engine, write=True) as u:
            if kind == "authorization":
                pq.add_authorization(u, patient_key=patient_key, purpose=str(data.get("purpose") or "marketing"),
                                     reference=data.get("reference"), granted_at=ts)
                done = f"authorization for {data.get('purpose') or 'marketing'} recorded"
            elif kind == "opt_out":
                pq.add_suppression(u, patient_key=patient_key, destination=data.get("destination"),
                                   purpose=data.get("purpose"), reason=str(data.get("reason") or "opt-out"),
                                   source=str(data.get("source") or "operator"), created_at=ts)
                done = "opt-out recorded"
            elif kind == "consent":
                dq.add_consent(u, patient_key=patient_key, fhir_id=str(data.get("id") or "") or None,
                               status=str(data.get("status") or "active"), resource=orjson.dumps(data).decode(),
                               source="golden", now=ts)
                done = f"consent {data.get('id') or ''} recorded".replace("  ", " ")
            elif kind == "revoke":
                what = data.get("what")
                found: int | None
                if what == "authorization":  # the most recent active one
                    found = next((a.id for a in reversed(pq.authorizations_of(u, patient_key)) if a.revoked_at is None),
                                 None)
                    if found is not None:
                        pq.revoke_authorization(u, found, ts)
                elif what == "opt_out":
                    found = next((o.id for o in pq.suppressions(u, patient_key=patient_key, active=True, limit=1)), None)
                    if found is not None:
                        pq.revoke_suppression(u, found, ts)
                elif what == "consent":
                    found = next((c.id for c in reversed(pq.consents_of(u, patient_key)) if c.status == "active"), None)
                    if found is not None:
                        dq.set_consent_status(u, found, "inactive", ts)
                else:
                    raise ValueError(f"revoke: {what!r} is not authorization, opt_out or consent")
                if found is None:
                    raise ValueError(f"revoke {what}: the patient has no active {what}")
                done = f"{what} revoked"
            else:
                raise ValueError(f"unknown privacy record {kind!r}")
        return done

    def triggers(self) -> list[TriggerRecord]:
        with unit(self.engine) as u:
            return dq.triggers(u)

    def fire_until(self, until: datetime) -> list[TriggerRecord]:
        """Run the real scheduler on the simulated clock up to ``until`` (opt-outs, caps,
        authorization, deceased and hospice checks apply; no delivery); return the
        triggers it handled. The clock ends at ``until`` when that is later."""
        sched = Scheduler(self.engine, lambda: self.rs, clock=lambda: self.now, batch=500)
        handled: list[int] = []
        while True:
            nxt = sched.next_due()
            if nxt is None or nxt > until.timestamp():
                break
            self.now = max(self.now, datetime.fromtimestamp(nxt, tz=timezone.utc))
            with unit(self.engine) as u:
                handled += dq.due_ids(u, self.now.timestamp())
            if not sched.fire_due():
                break
        self.now = max(self.now, until)
        if not handled:
            return []
        with unit(self.engine) as u:
            return dq.triggers_by_due(u, handled)


def load_input(path: Path) -> bytes:
    return path.read_bytes()
