"""The processing worker: stored inbound messages, oldest first, each in its own
savepoint inside a batch transaction; a failure marks that message ``failed`` with
the reason (kept for inspection and replay) and never blocks the rest."""
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Callable, Protocol

from sqlalchemy.engine import Engine

from ..config.sources import Source
from ..model import InboundItem, Normalized, ResourceChange
from ..normalize.hl7_peek import decode
from ..rules.load import RuleSet
from ..storage.queries import ingest as q
from ..storage.sql import UnitOfWork, unit
from ..storage.statuses import InboundStatus
from ..scheduler.runner import Fired, Scheduler
from .changes import ChangeResult, apply_change, merge_patients, upsert_patient

log = logging.getLogger("careloop.process")

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Handler(Protocol):
    def __call__(self, u: UnitOfWork, msg: InboundItem, rs: RuleSet, now: datetime) -> ChangeResult: ...


def normalize_item(msg: InboundItem, rs: RuleSet) -> tuple[Source, Normalized]:
    """Decode and normalize one stored HL7v2 message (pure CPU, no I/O: may run outside any transaction)."""
    from ..normalize.hl7v2 import normalize_hl7

    source = rs.sources.get(msg.source) or rs.sources.by_name["default"]
    text, _codec, _problems = decode(bytes(msg.raw), source.hl7.charset_fallback)
    return source, normalize_hl7(text, source)


def handle_hl7(u: UnitOfWork, msg: InboundItem, rs: RuleSet, now: datetime,
               normalized: tuple[Source, Normalized] | None = None) -> ChangeResult:
    """Normalize one stored HL7v2 message (unless ``normalized`` already is) and apply its changes."""
    source, norm = normalized if normalized is not None else normalize_item(msg, rs)
    total = ChangeResult()
    occurred = norm.occurred_at.timestamp()
    if norm.patient is not None and norm.patient_key:
        upsert_patient(u, norm.patient_key, norm.patient, occurred, now.timestamp())
    if norm.merge is not None:
        merge_patients(u, norm.merge.surviving_key, norm.merge.retired_key, now)
    keep: frozenset[str] = getattr(norm, "keep_status", frozenset())
    for res in norm.resources:
        change = ResourceChange(
            resource=res, previous=None, patient_key=norm.patient_key, source=source.name,
            arrival="message", occurred_at=norm.occurred_at,
        )
        r = apply_change(u, change, rs, now=now, inbound_id=msg.id, keep_status=res.get("id") in keep,
                         source_zone=source.hl7.timezone)
        total.events += r.events
        total.decisions += r.decisions
        total.triggers += r.triggers
        total.cancelled += r.cancelled
        total.due_now = total.due_now or r.due_now
        if r.note and not total.note:
            total.note = r.note
    return total


class Hl7Handler:
    """:func:`handle_hl7` with the CPU-only half done ahead (issue 16).

    On SQLite the processor calls :meth:`prefetch` for the next rows *before* its batch takes the
    one write lock, so parsing and mapping (about 40 % of a message's processing) no longer hold up
    the inbox's commits and their ACKs. The result is kept for that row and rule-set version only
    and used once; a row claimed without it (PostgreSQL, or a row that arrived meanwhile) is
    normalized inside the transaction as before. Normalization is pure, so the outcome is identical.
    """

    MAX_KEPT = 256

    def __init__(self) -> None:
        # (row id, its bytes' hash, rule-set version) -> the normalized message, or what normalizing raised
        self._ready: dict[tuple[int, int, str], tuple[Source, Normalized] | BaseException] = {}
        self._ruleset: Callable[[], RuleSet] | None = None

    def bind(self, ruleset: Callable[[], RuleSet]) -> "Hl7Handler":
        self._ruleset = ruleset
        return self

    def prefetch(self, msg: InboundItem) -> None:
        if self._ruleset is None or msg.id is None:
            return
        rs = self._ruleset()
        key = (msg.id, hash(bytes(msg.raw)), rs.version)
        if key in self._ready:
            return
        if len(self._ready) >= self.MAX_KEPT:
            self._ready.clear()
        try:
            self._ready[key] = normalize_item(msg, rs)
        except Exception as exc:  # raised again inside the message's savepoint: it is marked failed there
            self._ready[key] = exc

    def __call__(self, u: UnitOfWork, msg: InboundItem, rs: RuleSet, now: datetime) -> ChangeResult:
        ready = self._ready.pop((msg.id, hash(bytes(msg.raw)), rs.version), None) if msg.id is not None else None
        if isinstance(ready, BaseException):
            raise ready
        return handle_hl7(u, msg, rs, now, ready)


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
        pg_budget_s: float = 0.1,
        scheduler: Scheduler | None = None,
        fire_limit: int = 32,
    ) -> None:
        self.engine = engine
        self.ruleset = ruleset
        self.clock = clock
        from .fhir_handler import FhirHandler  # FHIR notifications; the runtime swaps in one that can fetch

        hl7_handler = Hl7Handler().bind(ruleset)
        self.handlers: dict[str, Handler] = {"mllp": hl7_handler, "http": hl7_handler, "fhir": FhirHandler()}
        if handlers:
            self.handlers.update(handlers)
        self.on_due = on_due
        self.fault_hook = fault_hook
        self.batch = batch
        # On SQLite one transaction holds the only write lock: a short budget per batch lets
        # the inbox commit (and ACK) between batches instead of waiting for a whole batch.
        self.budget_s = budget_s
        self.pg_budget_s = pg_budget_s
        #: fires the triggers a batch made due now in the batch's own transaction (``None``: ``on_due``
        #: wakes a scheduler, which fires them in a transaction of its own)
        self.scheduler = scheduler
        self.fire_limit = fire_limit
        self.processed = 0
        self.failed = 0
        self._limit = min(16, batch)

    def run_once(self) -> int:
        """Process up to ``batch`` messages (within the time budget); return how many were handled."""
        if self.engine.dialect.name == "sqlite" and self._prefetch() == 0:
            # nothing waits: no write transaction (issue 16). The worker steps until a batch is empty,
            # so every wake-up ended with an empty write unit: SQLite's write lock (and the one between
            # processes, which ingest waits for), three PRAGMAs, BEGIN IMMEDIATE, the claim and COMMIT.
            # A row committed after this read wakes the worker again (the inbox's on_commit).
            return 0
        return self._run_once()

    def _prefetch(self) -> int | None:
        """Let handlers do their network reads (a FHIR Patient, say) for the next messages before
        the batch takes the write lock: a slow or unreachable server must not hold up ingest.
        Returns how many rows wait (``None``: no handler prefetches, nothing was read)."""
        fetching = {ch: h for ch, h in self.handlers.items() if callable(getattr(h, "prefetch", None))}
        if not fetching:
            return None
        with unit(self.engine) as u:
            rows: list[InboundItem] = u.all(q.INBOX_NEXT, n=self._limit)
        self._prefetch_rows(rows)
        return len(rows)

    def _prefetch_rows(self, rows: list[InboundItem]) -> None:
        fetching = {ch: h for ch, h in self.handlers.items() if callable(getattr(h, "prefetch", None))}
        for row in rows:
            handler = fetching.get(row.channel)
            if handler is not None:
                handler.prefetch(row)  # type: ignore[attr-defined]

    def _run_once(self) -> int:
        rs = self.ruleset()
        # Processing commits need not wait for fsync (SQLite ``durable=False``): the inbox row stays
        # `received` until this commit lands, so a lost commit is processed again, and every later
        # durable commit (scheduler, delivery) syncs the WAL up to and including this one.
        with unit(self.engine, write=True, durable=False) as u:
            rows: list[InboundItem] = u.all(q.INBOX_CLAIM, n=self._limit)  # SKIP LOCKED on PostgreSQL
            if not rows:
                return 0
            if not u.sqlite:  # no single writer to hold up: read what handlers need for the rows claimed
                self._prefetch_rows(rows)
            due = 0  # messages that made a trigger due now
            started = time.perf_counter()
            # SQLite: a short batch lets the inbox commit between batches (one writer); PostgreSQL
            # has no single writer, and a longer batch spreads its BEGIN/claim/COMMIT over more messages
            budget = self.budget_s if u.sqlite else max(self.budget_s, self.pg_budget_s)
            done: list[dict[str, object]] = []
            with u.pipeline():  # PostgreSQL: writes travel with the next read
                for msg in rows:
                    if done and (u.should_yield() or time.perf_counter() - started > budget):
                        break  # the rest stay `received` for the next batch (an ingest commit waits, or the budget is spent)
                    outcome, handled_due = self._handle(u, msg, rs)
                    done.append(outcome)
                    due += handled_due
                u.many(q.INBOX_DONE, done)
            fired = self._fire(u, min(self.fire_limit, 4 * due)) if due else None
        # size the next claim to what fits the budget (a claim loads raw payloads)
        self._limit = max(4, min(self.batch, 2 * len(done)))
        if self.fault_hook:
            self.fault_hook("process.after_commit")
        if fired is not None and self.scheduler is not None:
            self.scheduler.after_commit(fired)
        if due and self.on_due and (fired is None or fired.handled >= min(self.fire_limit, 4 * due)):
            self.on_due()  # the scheduler's loop fires the rest
        return len(done)

    def _fire(self, u: UnitOfWork, limit: int) -> Fired | None:
        """Fire up to ``limit`` due triggers (oldest due first, whichever message made them) in the
        batch's transaction (issue 16). The limit follows the batch (4 per message that made one due,
        at most ``fire_limit``), so a backlog of due triggers leaves the batch short: the scheduler's
        loop, woken, fires the rest in its own transactions.

        At a steady 200 messages/s on SQLite each message used to take three write transactions in
        turn (processing, firing, the delivery's claim), each waiting for the one write lock behind
        the others and the inbox's commits; firing here saves one of them and the scheduler's wake-up.
        The batch's commit is not durable (``durable=False``), which stays safe: until a durable
        commit syncs the WAL (the delivery's claim, before anything is sent) a lost commit loses
        the processing and the firing together, and both are redone from the ``received`` row."""
        if self.scheduler is None:
            return None
        try:
            with u.savepoint():
                return self.scheduler.fire_in(u, limit)
        except Exception as exc:  # the batch's processing still commits; the scheduler's loop (woken) fires them
            log.error("firing in the processing batch failed", extra={"action": "process.fire_error", "error_type": type(exc).__name__})
            return None

    def _handle(self, u: UnitOfWork, msg: InboundItem, rs: RuleSet) -> tuple[dict[str, object], bool]:
        """Run one message's handler in its own savepoint; return its ``inbox.done`` row and whether
        a trigger is due now."""
        handler = self.handlers.get(msg.channel)
        due = False
        try:
            with u.savepoint():
                if handler is None:
                    raise ValueError(f"no handler for channel {msg.channel}")
                result = handler(u, msg, rs, self.clock())
            status, error = InboundStatus.PROCESSED, (result.note if result.note and not result.events else None)
            due = result.due_now
            self.processed += 1
        except Exception as exc:
            status, error = InboundStatus.FAILED, f"{type(exc).__name__}: {exc}"[:2000]
            self.failed += 1
            log.warning("processing failed", extra={"action": "process.failed", "inbound_id": msg.id, "error_type": type(exc).__name__})
        return {"id": msg.id, "status": status, "error": error, "processed_at": time.time()}, due

    def drain(self, max_rounds: int = 10_000) -> int:
        total = 0
        for _ in range(max_rounds):
            n = self.run_once()
            total += n
            if n == 0:
                break
        return total
