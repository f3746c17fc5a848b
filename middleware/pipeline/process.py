"""The processing worker: stored inbound messages, oldest first, each in its own
savepoint inside a batch transaction; a failure marks that message ``failed`` with
the reason (kept for inspection and replay) and never blocks the rest."""
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Callable, Protocol

from sqlalchemy.engine import Engine
from sqlmodel import Session

from ..model import InboundItem, ResourceChange
from ..normalize.hl7_peek import decode
from ..rules.load import RuleSet
from ..storage.db import begin_write, is_sqlite, write_lock
from ..storage.rawsql import Raw
from .changes import ChangeResult, apply_change, merge_patients, upsert_patient

log = logging.getLogger("careloop.process")

Clock = Callable[[], datetime]
#: the oldest stored messages not yet processed
_NEXT = "SELECT id, source, channel, raw, meta FROM inbound_message WHERE status = 'received' ORDER BY id LIMIT ?"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Handler(Protocol):
    def __call__(self, session: Session, msg: InboundItem, rs: RuleSet, now: datetime) -> ChangeResult: ...


def handle_hl7(session: Session, msg: InboundItem, rs: RuleSet, now: datetime) -> ChangeResult:
    """Normalize one stored HL7v2 message and apply its changes."""
    from ..normalize.hl7v2 import normalize_hl7

    source = rs.sources.get(msg.source) or rs.sources.by_name["default"]
    text, _codec, _problems = decode(bytes(msg.raw), source.hl7.charset_fallback)
    norm = normalize_hl7(text, source)
    total = ChangeResult()
    occurred = norm.occurred_at.timestamp()
    if norm.patient is not None and norm.patient_key:
        upsert_patient(session, norm.patient_key, norm.patient, occurred, now.timestamp())
    if norm.merge is not None:
        merge_patients(session, norm.merge.surviving_key, norm.merge.retired_key, now)
    keep: frozenset[str] = getattr(norm, "keep_status", frozenset())
    for res in norm.resources:
        change = ResourceChange(
            resource=res, previous=None, patient_key=norm.patient_key, source=source.name,
            arrival="message", occurred_at=norm.occurred_at,
        )
        r = apply_change(session, change, rs, now=now, inbound_id=msg.id, keep_status=res.get("id") in keep,
                         source_zone=source.hl7.timezone)
        total.events += r.events
        total.decisions += r.decisions
        total.triggers += r.triggers
        total.cancelled += r.cancelled
        total.due_now = total.due_now or r.due_now
        if r.note and not total.note:
            total.note = r.note
    return total


class Processor:
    """Drains ``received`` inbound rows. Thread-safe to call from one worker thread."""

    def __init__(
        self,
        engine: Engine,
        ruleset: Callable[[], RuleSet],
        *,
        clock: Clock = utcnow,
        handlers: dict[str, Handler] | None = None,
        on_due: Callable[[], None] | None = None,
        batch: int = 100,
        fault_hook: Callable[[str], None] | None = None,
        budget_s: float = 0.008,
    ) -> None:
        self.engine = engine
        self.ruleset = ruleset
        self.clock = clock
        from .fhir_handler import FhirHandler  # FHIR notifications; the runtime swaps in one that can fetch

        self.handlers: dict[str, Handler] = {"mllp": handle_hl7, "http": handle_hl7, "fhir": FhirHandler()}
        if handlers:
            self.handlers.update(handlers)
        self.on_due = on_due
        self.fault_hook = fault_hook
        self.batch = batch
        # On SQLite one transaction holds the only write lock: a short budget per batch lets
        # the inbox commit (and ACK) between batches instead of waiting for a whole batch.
        self.budget_s = budget_s
        self.processed = 0
        self.failed = 0
        self._limit = min(16, batch)

    def run_once(self) -> int:
        """Process up to ``batch`` messages (within the time budget); return how many were handled."""
        self._prefetch()
        with write_lock(self.engine):
            return self._run_once()

    def _prefetch(self) -> None:
        """Let handlers do their network reads (a FHIR Patient, say) for the next messages before
        the batch takes the write lock: a slow or unreachable server must not hold up ingest."""
        fetching = {ch: h for ch, h in self.handlers.items() if callable(getattr(h, "prefetch", None))}
        if not fetching:
            return
        with Session(self.engine) as session:
            rows = Raw(session).all(_NEXT, (self._limit,))
        for row in rows:
            handler = fetching.get(row[2])
            if handler is not None:
                handler.prefetch(InboundItem(*row))  # type: ignore[attr-defined]

    def _restore_full(self, session: Session) -> None:
        session.connection().exec_driver_sql("PRAGMA synchronous=FULL")

    def _run_once(self) -> int:
        rs = self.ruleset()
        sqlite = is_sqlite(self.engine)
        with Session(self.engine, expire_on_commit=False) as session:
            if sqlite:
                # Processing commits need not wait for fsync: the inbox row stays `received` until
                # this commit lands, so a lost commit is processed again, and every later FULL commit
                # (scheduler, delivery) syncs the WAL up to and including this one.
                session.connection().exec_driver_sql("PRAGMA synchronous=NORMAL")
            begin_write(session)
            rows = self._claim(Raw(session))
            if not rows:
                session.rollback()
                if sqlite:
                    self._restore_full(session)
                return 0
            due = False
            started = time.perf_counter()
            done: list[InboundItem] = []
            for msg in rows:
                if done and time.perf_counter() - started > self.budget_s:
                    break  # the rest stay `received` for the next batch
                done.append(msg)
                due = self._handle(session, msg, rs) or due
            Raw(session).many(
                "UPDATE inbound_message SET status = ?, error = ?, attempts = attempts + 1, processed_at = ? WHERE id = ?",
                [(m.status, m.error, m.processed_at, m.id) for m in done])
            session.commit()
            if sqlite:
                self._restore_full(session)
        # size the next claim to what fits the budget (a claim loads raw payloads)
        self._limit = max(4, min(self.batch, 2 * len(done)))
        if self.fault_hook:
            self.fault_hook("process.after_commit")
        if due and self.on_due:
            self.on_due()
        return len(done)

    def _claim(self, db: Raw) -> list[InboundItem]:
        """The oldest ``received`` rows, as detached objects (status written back in one statement)."""
        if not db.pg:
            return [InboundItem(*r) for r in db.all(_NEXT, (self._limit,))]
        return [InboundItem(*r) for r in db.all(_NEXT + " FOR UPDATE SKIP LOCKED", (self._limit,))]

    def _handle(self, session: Session, msg: InboundItem, rs: RuleSet) -> bool:
        """Run one message's handler in its own savepoint; set its status; return whether a trigger is due now."""
        handler = self.handlers.get(msg.channel)
        sp = session.begin_nested()
        due = False
        try:
            if handler is None:
                raise ValueError(f"no handler for channel {msg.channel}")
            result = handler(session, msg, rs, self.clock())
            sp.commit()
            msg.status = "processed"
            msg.error = result.note if result.note and not result.events else None
            due = result.due_now
            self.processed += 1
        except Exception as exc:
            sp.rollback()
            msg.status = "failed"
            msg.error = f"{type(exc).__name__}: {exc}"[:2000]
            self.failed += 1
            log.warning("processing failed", extra={"action": "process.failed", "inbound_id": msg.id, "error_type": type(exc).__name__})
        msg.processed_at = time.time()
        return due

    def drain(self, max_rounds: int = 10_000) -> int:
        total = 0
        for _ in range(max_rounds):
            n = self.run_once()
            total += n
            if n == 0:
                break
        return total
