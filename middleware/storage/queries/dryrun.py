"""Queries of the dry runs (``careloop mappings test``, ``careloop explain``): the scratch
database's inbox rows, privacy facts recorded at a simulated clock, and its triggers."""
from __future__ import annotations

from sqlalchemy import insert, select

from ..sql import UnitOfWork, any_of, param, query
from ..statuses import TriggerStatus
from ._tables import CONSENT, INBOUND, TRIGGER
from .ingest import INBOX_COLUMNS
from .operator import TriggerRecord

_T = TRIGGER.c
_TRIGGER_COLUMNS = [_T[name] for name in TriggerRecord._fields]

INBOX_ADD = query("dryrun.inbox_add", insert(INBOUND).values({c: param(c) for c in INBOX_COLUMNS})
                  .returning(INBOUND.c.id))
CONSENT_ADD = query("dryrun.consent_add", insert(CONSENT).values(
    {c: param(c) for c in ("patient_key", "fhir_id", "status", "resource", "source", "received_at", "updated_at")}))
CONSENT_STATUS = query("dryrun.consent_status", CONSENT.update().where(CONSENT.c.id == param("id"))
                       .values(status=param("status"), updated_at=param("now")))
TRIGGERS = query("dryrun.triggers", select(*_TRIGGER_COLUMNS).order_by(_T.id), TriggerRecord)
DUE_IDS = query("dryrun.due_ids", select(_T.id).where(_T.status == TriggerStatus.PENDING, _T.due_at <= param("now")))
TRIGGERS_BY_DUE = query("dryrun.triggers_by_due", select(*_TRIGGER_COLUMNS).where(any_of(_T.id, "ids"))
                        .order_by(_T.due_at), TriggerRecord)


def inbox_add(u: UnitOfWork, **values: object) -> int:
    """Store an inbound message (``values``: every column of ``ingest.INBOX_COLUMNS``); its id."""
    return int(u.scalar(INBOX_ADD, **values))


def add_consent(u: UnitOfWork, *, patient_key: str, fhir_id: str | None, status: str, resource: str, source: str,
                now: float) -> None:
    u.run(CONSENT_ADD, patient_key=patient_key, fhir_id=fhir_id, status=status, resource=resource, source=source,
          received_at=now, updated_at=now)


def set_consent_status(u: UnitOfWork, consent_id: int, status: str, now: float) -> None:
    u.run(CONSENT_STATUS, id=consent_id, status=status, now=now)


def triggers(u: UnitOfWork) -> list[TriggerRecord]:
    """Every trigger, oldest first."""
    rows: list[TriggerRecord] = u.all(TRIGGERS)
    return rows


def due_ids(u: UnitOfWork, now: float) -> list[int]:
    """Ids of the pending triggers due at ``now``."""
    return [int(i) for (i,) in u.all(DUE_IDS, now=now)]


def triggers_by_due(u: UnitOfWork, ids: list[int]) -> list[TriggerRecord]:
    """The triggers ``ids``, in due order."""
    rows: list[TriggerRecord] = u.all(TRIGGERS_BY_DUE, ids=ids)
    return rows
