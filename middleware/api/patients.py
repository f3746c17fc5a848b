"""A patient's timeline, by careloop's internal patient id: ``GET /api/patients/{pt_id}/timeline``.

Every inbound message -> event -> trigger -> delivery -> outcome entry of one patient, in time
order, with the reasons (why a trigger was cancelled, suppressed, skipped, moved, held out).
Merges are followed: a retired id answers with its survivor's timeline, and the survivor's
timeline holds the history of every id merged into it (events and triggers are re-stamped at
the merge; outcome entries are found through every key that now points at the survivor).

Pseudonymous: no entry carries a patient key, MRN, name or birth date. :func:`identifiers` reads
them for the console's audited reveal only (``console/pages/patients.py``); the API does not
serve them. The console's pages call the same functions (:func:`timeline`, :func:`recent_patients`,
:func:`find_by_contact_key`, :func:`find_by_mrn`): one source of truth.

Pages: the newest ``limit`` events, triggers and outcome entries before the cursor (each stream
keyset-paginated by its own id, one index range scan each), with the messages and deliveries of
those events and triggers; ``next_cursor`` is passed back as ``cursor`` for older history.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, Protocol, TypeVar

import orjson
from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel
from sqlalchemy.engine import Engine

from ..config.sources import Sources
from ..delivery.contact_keys import resolve as resolve_contact_key
from ..keyring import ContactKeyring
from ..storage.patient_ids import current_patient_id, resolve_patient_id
from ..storage.queries import timeline as q
from ..storage.sql import unit
from .deps import TokenDep

router = APIRouter(dependencies=[TokenDep])

#: ``pt_`` + 26 lowercase base32 characters (``storage/patient_ids.new_patient_id``)
PATIENT_ID = re.compile(r"pt_[a-z2-7]{26}")
CONTACT_KEY = re.compile(r"ck_[0-9a-f]{40}")
MAX_PAGE = 500

Kind = Literal["merge", "message", "event", "trigger", "delivery", "outcome"]
_RANK = {"merge": 0, "message": 1, "event": 2, "trigger": 3, "delivery": 4, "outcome": 5}


class Entry(BaseModel):
    """One step of the patient's history (no identifier in any field)."""

    kind: Kind
    id: str
    at: str  # ISO 8601, UTC
    ts: float
    summary: str
    status: str | None = None
    why: str | None = None  # cancelled | suppressed | skipped | moved | held out | failed ...
    reason: str | None = None
    parent: str | None = None  # "message:12", "event:40", "trigger:7"
    href: str | None = None  # the console page of this item, when it has one
    attempts: int | None = None
    timing: list[str] = []  # how a trigger's due time was placed: send time, send zone, quiet hours
    arm: str | None = None
    outcome: str | None = None


class MergedId(BaseModel):
    id: str
    merged_at: str | None


class Timeline(BaseModel):
    patient_id: str  # the surviving id
    requested_id: str  # the id asked for (a retired one resolves to its survivor)
    merged_ids: list[MergedId]
    entries: list[Entry]
    next_cursor: str | None


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat() if ts is not None else None


# -- the cursor: one keyset position per stream ------------------------------------------------

@dataclass(frozen=True)
class Cursor:
    """Positions of the three keyset streams: ``None`` from the newest, ``0`` when exhausted."""

    events: int | None = None
    triggers: int | None = None
    outcomes: int | None = None

    def encode(self) -> str | None:
        if self.events == 0 and self.triggers == 0 and self.outcomes == 0:
            return None
        return f"e{self.events or 0}.t{self.triggers or 0}.o{self.outcomes or 0}"

    @classmethod
    def decode(cls, text: str | None) -> "Cursor":
        if not text:
            return cls()
        m = re.fullmatch(r"e(\d{1,19})\.t(\d{1,19})\.o(\d{1,19})", text)
        if m is None:
            raise ValueError("cursor: expected the next_cursor of a previous page")
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3)))


class _HasId(Protocol):
    @property
    def id(self) -> int: ...


RowT = TypeVar("RowT", bound=_HasId)


def _page(rows: list[RowT], pos: int | None, limit: int) -> tuple[list[RowT], int]:
    """The rows of this page and the stream's next position (0: no more)."""
    if pos == 0:
        return [], 0
    if len(rows) > limit:
        rows = rows[:limit]
        return rows, int(rows[-1].id)
    return rows, 0


# -- the reasons -------------------------------------------------------------------------------

#: the steps of a trigger's explain trace that place its due time (times and zones only)
_TIMING = re.compile(r"^(quiet hours |send time |send zone |due at |due \S+ after )|business day|has already passed|"
                     r"clocks spring forward|the wait ends")


def timing_steps(explain: str | None) -> list[str]:
    """How the trigger's due time was placed (send time, business days, quiet hours), from its trace."""
    try:
        steps = orjson.loads(explain) if explain else []
    except orjson.JSONDecodeError:
        return []
    return [s for s in steps if isinstance(s, str) and _TIMING.search(s)] if isinstance(steps, list) else []


def trigger_why(t: q.TimelineTrigger, timing: list[str]) -> str | None:
    """The kind of thing that happened to a trigger, for the reason beside it."""
    if t.status in ("cancelled", "suppressed", "skipped"):
        return t.status
    if t.reason and "moved" in t.reason:
        return "moved"
    if any(s.startswith("quiet hours") for s in timing):
        return "moved by quiet hours"
    if t.flag:
        return "flagged"
    return None


def _trigger_entry(t: q.TimelineTrigger) -> Entry:
    step = f", journey {t.journey_id} step {t.journey_step}" if t.journey_id else ""
    fired = f"; fired {iso(t.fired_at)}" if t.fired_at else ""
    reason = "; ".join(x for x in (t.reason, t.flag) if x) or None
    timing = timing_steps(t.explain)
    return Entry(kind="trigger", id=str(t.id), at=iso(t.created_at) or "", ts=t.created_at, status=t.status,
                 summary=f"{t.name} (rule {t.rule_id}, {t.purpose}{step}) to {t.destinations.replace(',', ', ') or 'no destination'}, "
                         f"due {iso(t.due_at)}{fired}",
                 why=trigger_why(t, timing), reason=reason, timing=timing, parent=f"event:{t.event_id}" if t.event_id else None)


#: a resource key careloop derived by hashing (``a-``/``e-``/``p-`` + 16 hex): pseudonymous, shown
HASHED_KEY = re.compile(r"[A-Za-z]+/[a-z]-[0-9a-f]{16}")


def shown_resource(resource_type: str, resource_key: str) -> str:
    """The resource as the timeline names it: a hashed key as is; any other key (a Patient's is
    ``Patient/system|MRN``, a FHIR source's may be the server's id) only by its type."""
    return resource_key if HASHED_KEY.fullmatch(resource_key) else resource_type


def _event_entry(e: q.TimelineEvent) -> Entry:
    change = f" {e.previous_status or '-'} -> {e.status}" if e.status else ""
    source = f" from {e.source}" if e.source else ""
    return Entry(kind="event", id=str(e.id), at=iso(e.created_at) or "", ts=e.created_at, status=e.status,
                 summary=f"{e.type}: {shown_resource(e.resource_type, e.resource_key)}{change} ({e.arrival}{source}, "
                         f"occurred {iso(e.occurred_at)})",
                 parent=f"message:{e.inbound_id}" if e.inbound_id else None)


def _message_entry(m: q.TimelineMessage) -> Entry:
    what = m.message_type or "message"
    control = f", control id {m.control_id}" if m.control_id else ""
    return Entry(kind="message", id=str(m.id), at=iso(m.received_at) or "", ts=m.received_at, status=m.status,
                 summary=f"{what} from {m.source} over {m.channel}{control}",
                 why="failed" if m.error else None, reason=m.error, href=f"/messages/{m.id}")


def _delivery_entry(d: q.TimelineDelivery) -> Entry:
    code = f" (HTTP {d.last_status_code})" if d.last_status_code else ""
    done = f", delivered {iso(d.delivered_at)}" if d.delivered_at else ""
    return Entry(kind="delivery", id=str(d.id), at=iso(d.created_at) or "", ts=d.created_at, status=d.status,
                 summary=f"to {d.destination}{done}", attempts=d.attempts,
                 why=d.status if d.status in ("dead", "suppressed", "unconfirmed") else None,
                 reason=(d.last_error[:300] + code) if d.last_error else None, parent=f"trigger:{d.trigger_id}",
                 href=f"/deliveries/{d.id}")


def _outcome_entry(o: q.TimelineOutcome) -> Entry:
    held = o.arm == "held_out"
    where = f" ({o.experiment} {o.period})" if o.experiment else ""
    achieved = f", {'achieved' if o.status == 'achieved' else 'resolved'} {iso(o.achieved_at)}" if o.achieved_at else ""
    closes = f", window closes {iso(o.window_closes)}" if o.window_closes and o.status == "pending" else ""
    return Entry(kind="outcome", id=str(o.id), at=iso(o.created_at) or "", ts=o.created_at, status=o.status,
                 summary=f"goal {o.goal_id} of rule {o.rule_id}{' (journey ' + o.journey_id + ')' if o.journey_id else ''}"
                         f"{achieved}{closes}; {'contacted' if o.delivered else 'not contacted'}",
                 arm=o.arm or "no holdout", outcome=o.status, why="held out" if held else None,
                 reason=f"held out{where}: measured, not contacted" if held else None,
                 parent=f"trigger:{o.trigger_id}" if o.trigger_id else (f"event:{o.origin_event_id}" if o.origin_event_id else None))


# -- the functions the API and the console share -------------------------------------------------

def survivor_of(engine: Engine, pid: str) -> str | None:
    """The surviving id of ``pid`` (itself unless merged away); None for an id careloop never issued."""
    if not PATIENT_ID.fullmatch(pid):
        return None
    with unit(engine) as u:
        return current_patient_id(u, pid)


def timeline(engine: Engine, pid: str, cursor: str | None = None, limit: int = 100) -> Timeline | None:
    """One page of the timeline of ``pid``'s patient, oldest first; None for an unknown id.

    Raises ValueError for a malformed cursor."""
    limit = max(1, min(limit, MAX_PAGE))
    pos = Cursor.decode(cursor)
    if not PATIENT_ID.fullmatch(pid):
        return None
    with unit(engine) as u:
        survivor = current_patient_id(u, pid)
        if survivor is None:
            return None
        merged = q.merged_into(u, survivor)
        keys = q.keys_of(u, survivor)
        events, next_e = _page(q.events(u, survivor, pos.events, limit + 1) if pos.events != 0 else [], pos.events, limit)
        triggers, next_t = _page(q.triggers(u, survivor, pos.triggers, limit + 1) if pos.triggers != 0 else [],
                                 pos.triggers, limit)
        outcomes, next_o = _page(q.outcomes(u, keys, pos.outcomes, limit + 1) if pos.outcomes != 0 else [],
                                 pos.outcomes, limit)
        messages = q.messages(u, sorted({e.inbound_id for e in events if e.inbound_id is not None}))
        deliveries = q.deliveries(u, [t.id for t in triggers])
    entries = [*map(_message_entry, messages), *map(_event_entry, events), *map(_trigger_entry, triggers),
               *map(_delivery_entry, deliveries), *map(_outcome_entry, outcomes)]
    if cursor is None:  # the merges, once, on the first page
        entries += [Entry(kind="merge", id=m.id, at=iso(m.merged_at) or "", ts=m.merged_at or m.created_at,
                          summary=f"patient {m.id} merged into this patient: its history is shown here",
                          href=f"/patients/{m.id}") for m in merged]
    entries.sort(key=lambda x: (x.ts, _RANK[x.kind], int(x.id) if x.id.isdigit() else 0))
    return Timeline(patient_id=survivor, requested_id=pid,
                    merged_ids=[MergedId(id=m.id, merged_at=iso(m.merged_at)) for m in merged], entries=entries,
                    next_cursor=Cursor(next_e, next_t, next_o).encode())


class RecentPatient(BaseModel):
    patient_id: str
    last_active: float  # epoch seconds of the patient's latest event


class RecentPatients(BaseModel):
    items: list[RecentPatient]
    next_before: int | None  # pass back as ``before`` for older activity


def recent_patients(engine: Engine, before: int | None = None, limit: int = 50) -> tuple[list[RecentPatient], int | None]:
    """Patients by their latest event, newest first: ``(patients, before for the next page or None)``.

    Reads at most ``limit * 8`` events per page (keyset on the event id, no COUNT): a page may show
    fewer patients when a few patients own most of the newest events; the next page continues from
    the last event read, so a patient active again further back may reappear on an older page."""
    limit = max(1, min(limit, 200))
    scan = limit * 8
    with unit(engine) as u:
        rows = q.recent(u, before, scan)
    seen: dict[str, RecentPatient] = {}
    last_id: int | None = None
    for r in rows:
        last_id = r.id
        if r.patient_id not in seen:
            seen[r.patient_id] = RecentPatient(patient_id=r.patient_id, last_active=r.created_at)
            if len(seen) == limit:
                break
    more = len(rows) == scan or len(seen) == limit
    return list(seen.values()), (last_id if more and last_id is not None else None)


def find_by_contact_key(engine: Engine, keyring: ContactKeyring, ck: str) -> str | None:
    """The internal id of the patient of contact key ``ck`` (under a secret still valid for lookups)."""
    ck = ck.strip()
    if not CONTACT_KEY.fullmatch(ck):
        return None
    found = resolve_contact_key(engine, keyring, ck)
    if found is None:
        return None
    with unit(engine) as u:
        return resolve_patient_id(u, found[0])


def mrn_keys(sources: Sources, mrn: str, authority: str | None) -> list[str]:
    """The patient keys an MRN may have: ``system|mrn`` for the given assigning authority (or
    identifier system URI), else for every authority the configured HL7v2 sources map."""
    mrn = mrn.strip()
    authority = (authority or "").strip() or None
    if not mrn or "|" in mrn:
        return []
    systems: set[str] = set()
    if authority and ":" in authority:  # an identifier system URI
        systems.add(authority)
    for s in sources.items:
        if authority:
            if ":" not in authority:
                systems.add(s.hl7.system_for(authority))
            continue
        systems.update(s.hl7.identifier_systems.values())
        if s.hl7.mrn_authority:
            systems.add(s.hl7.system_for(s.hl7.mrn_authority))
    return sorted(f"{system}|{mrn}" for system in systems)


def find_by_mrn(engine: Engine, sources: Sources, mrn: str, authority: str | None = None) -> list[str]:
    """The internal ids (surviving) of the patients with this MRN: one primary-key look-up per
    candidate key, no scan. Several ids when authorities collide."""
    keys = mrn_keys(sources, mrn, authority)
    if not keys:
        return []
    with unit(engine) as u:
        found = q.ids_of_keys(u, keys)
        return sorted({s for s in (current_patient_id(u, p) for p in found.values()) if s})


class Identifier(BaseModel):
    system: str
    value: str
    authority: str | None = None  # the assigning authority that maps to the system, when configured
    current: bool = True  # False: a key merged away into this patient


class Identifiers(BaseModel):
    """What a reveal shows: identifiers and names from the stored PID / Patient resources."""

    patient_id: str
    identifiers: list[Identifier]
    names: list[str]


def _authorities(sources: Sources) -> dict[str, str]:
    out: dict[str, str] = {}
    for s in sources.items:
        for authority, system in s.hl7.identifier_systems.items():
            out.setdefault(system, authority)
    return out


def _name(n: dict[str, Any]) -> str:
    if isinstance(n.get("text"), str) and n["text"]:
        return str(n["text"])
    given = n.get("given")
    parts = [*(str(g) for g in (given if isinstance(given, list) else [])), str(n.get("family") or "")]
    return " ".join(p for p in parts if p)


def _is_mrn(identifier: dict[str, object]) -> bool:
    """A medical record number (identifier type ``MR``): the reveal shows MRNs, not SSNs or licences."""
    t = identifier.get("type")
    codings = t.get("coding") if isinstance(t, dict) else None
    return any(isinstance(c, dict) and c.get("code") == "MR" for c in codings or [])


def identifiers(engine: Engine, sources: Sources, pid: str) -> Identifiers | None:
    """The patient's identifiers (every key pointing at the surviving id, and the identifiers of
    the stored Patient resources) and names -- PHI: for an audited reveal only."""
    with unit(engine) as u:
        survivor = current_patient_id(u, pid) if PATIENT_ID.fullmatch(pid) else None
        if survivor is None:
            return None
        keys = q.keys_of(u, survivor)
        resources = q.patient_resources(u, keys)
    names = {r.key: r for r in resources}
    authority = _authorities(sources)
    out: list[Identifier] = []
    seen: set[tuple[str, str]] = set()
    person_names: list[str] = []
    for key in keys:
        system, _, value = key.partition("|")
        row = names.get(key)
        seen.add((system, value))
        out.append(Identifier(system=system, value=value, authority=authority.get(system),
                              current=row is None or row.merged_into is None))
    for r in resources:
        if r.merged_into is not None:
            continue
        res = orjson.loads(r.resource)
        for i in res.get("identifier") or []:
            if isinstance(i, dict) and i.get("value") and _is_mrn(i) and (str(i.get("system", "")), str(i["value"])) not in seen:
                seen.add((str(i.get("system", "")), str(i["value"])))
                out.append(Identifier(system=str(i.get("system", "")), value=str(i["value"]),
                                      authority=authority.get(str(i.get("system", "")))))
        for n in res.get("name") or []:
            if isinstance(n, dict) and (text := _name(n)) and text not in person_names:
                person_names.append(text)
    return Identifiers(patient_id=survivor, identifiers=out, names=person_names)


@router.get("/api/patients/{patient_id}/timeline", response_model=Timeline)
def patient_timeline(request: Request, patient_id: str, cursor: str | None = None,
                     limit: int = Query(100, ge=1, le=MAX_PAGE)) -> Timeline:
    """The patient's timeline (pseudonymous); a merged-away id answers with its survivor's."""
    try:
        got = timeline(request.app.state.runtime.engine, patient_id, cursor, limit)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    if got is None:
        raise HTTPException(404, "no patient has this id")
    return got


@router.get("/api/patients", response_model=RecentPatients)
def patients_recent(request: Request, before: int | None = Query(None, ge=1),
                    limit: int = Query(50, ge=1, le=200)) -> RecentPatients:
    """Recently active patients by internal id, newest first (keyset on the event id, no COUNT)."""
    items, next_before = recent_patients(request.app.state.runtime.engine, before, limit)
    return RecentPatients(items=items, next_before=next_before)
