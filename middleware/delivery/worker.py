"""The durable delivery worker: claim due deliveries, re-check consent and policy at
send time, project the payload (minimum necessary), send through the connector, then
record the attempt, the disclosure and the next retry in one transaction.

At-least-once: a crash between sending and recording re-sends the same idempotency key,
which destinations with native de-duplication (webhook-id, Segment messageId, Iterable
id) drop; for the others the send ledger stops a re-send once the success was recorded.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import httpx
import orjson
from sqlalchemy.engine import Engine
from sqlmodel import Session, or_, select

from ..config.destinations import Destination
from ..rules.load import RuleSet
from ..storage.db import is_sqlite
from ..storage.tables import DeliveryAttempt, DeliveryRow, Disclosure, KeyValue, SendLedger, Suppression, TriggerRow
from .policy import identifier_for, project
from .registry import Connector, Delivered, Outbound, Outcome, Permanent, SecretSource, connector_types
from .retry import CircuitBreaker, TokenBucket, decide

log = logging.getLogger("careloop.delivery")

LEASE_S = 120.0


@dataclass
class Claimed:
    delivery_id: int
    attempt: int
    destination: str
    outbound: Outbound | None  # None when suppressed / blocked before sending
    fields: list[str]
    patient_key: str | None
    trigger: dict[str, Any]
    skip_reason: str | None = None
    skip_status: str | None = None


class DeliveryWorker:
    def __init__(
        self,
        engine: Engine,
        ruleset: Callable[[], RuleSet],
        *,
        contact_secret: str,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        http: httpx.AsyncClient | None = None,
        secrets: SecretSource | None = None,
        link_base: str = "http://127.0.0.1:8080",
        fault_hook: Callable[[str], None] | None = None,
        consent_check: Callable[[Session, str | None, str, str], str | None] | None = None,
    ) -> None:
        self.engine = engine
        self.ruleset = ruleset
        self.contact_secret = contact_secret
        self.clock = clock
        self.http = http
        self.secrets = secrets or SecretSource()
        self.link_base = link_base
        self.fault_hook = fault_hook
        self.consent_check = consent_check
        self.connectors: dict[str, Connector] = {}
        self.breakers: dict[str, CircuitBreaker] = defaultdict(CircuitBreaker)
        self.buckets: dict[str, TokenBucket] = {}
        self._conn_version: str | None = None
        self.sent = 0

    # -- connectors -------------------------------------------------------
    def _connector(self, dest: Destination) -> Connector:
        rs = self.ruleset()
        if self._conn_version != rs.version:
            self.connectors.clear()
            self._conn_version = rs.version
        c = self.connectors.get(dest.name)
        if c is None:
            cls = connector_types()[dest.type]
            if self.http is None:
                self.http = httpx.AsyncClient(timeout=10.0)
            c = cls(dest.name, cls.Config.model_validate(dest.config), self.http, self.secrets, self.clock)
            self.connectors[dest.name] = c
            self.buckets.setdefault(dest.name, TokenBucket(cls.rate_limit))
        return c

    async def aclose(self) -> None:
        for c in self.connectors.values():
            await c.aclose()
        if self.http is not None:
            await self.http.aclose()

    # -- claim ------------------------------------------------------------
    def claim(self, limit: int = 200) -> list[Claimed]:
        rs = self.ruleset()
        now = self.clock().timestamp()
        out: list[Claimed] = []
        with Session(self.engine, expire_on_commit=False) as s:
            stmt = (
                select(DeliveryRow)
                .where(
                    or_(
                        (DeliveryRow.status == "pending") & (DeliveryRow.next_attempt_at <= now),
                        (DeliveryRow.status == "sending") & (DeliveryRow.locked_until < now),  # type: ignore[operator]
                    )
                )
                .order_by(DeliveryRow.next_attempt_at)  # type: ignore[arg-type]
                .limit(limit)
            )
            if not is_sqlite(self.engine):
                stmt = stmt.with_for_update(skip_locked=True)
            rows = list(s.exec(stmt))
            for d in rows:
                dest = rs.destinations.get(d.destination)
                if dest is not None and (not dest.enabled or self._disabled(s, dest.name)):
                    continue
                if dest is not None and not self.breakers[dest.name].allow():
                    continue
                t = s.get(TriggerRow, d.trigger_id)
                d.status, d.locked_until, d.attempts = "sending", now + LEASE_S, d.attempts + 1
                d.updated_at = now
                s.add(d)
                out.append(self._build(s, d, t, dest, rs))
            s.commit()
        return out

    def _disabled(self, s: Session, name: str) -> bool:
        return s.get(KeyValue, f"destination.disabled.{name}") is not None

    def _build(self, s: Session, d: DeliveryRow, t: TriggerRow | None, dest: Destination | None, rs: RuleSet) -> Claimed:
        base = dict(delivery_id=d.id or 0, attempt=d.attempts, destination=d.destination, fields=[])
        if t is None or dest is None:
            return Claimed(**base, outbound=None, patient_key=None, trigger={}, skip_status="dead",
                           skip_reason="trigger or destination no longer exists")
        tinfo = {"id": t.id, "rule_id": t.rule_id, "ruleset_version": t.ruleset_version, "purpose": t.purpose, "name": t.name}
        if t.status == "cancelled":
            return Claimed(**base, outbound=None, patient_key=t.patient_key, trigger=tinfo, skip_status="suppressed", skip_reason="trigger was cancelled")
        if t.purpose not in dest.policy.purposes:
            return Claimed(**base, outbound=None, patient_key=t.patient_key, trigger=tinfo, skip_status="suppressed", skip_reason=f"destination policy does not allow purpose {t.purpose}")
        reason = self._opted_out(s, t, dest)
        if reason is None and self.consent_check is not None:
            reason = self.consent_check(s, t.patient_key, dest.name, t.purpose)
        if reason:
            return Claimed(**base, outbound=None, patient_key=t.patient_key, trigger=tinfo, skip_status="suppressed", skip_reason=reason)
        payload, kept = project(orjson.loads(t.payload), dest.policy)
        ob = Outbound(
            delivery_id=d.id or 0, idempotency_key=d.idempotency_key, destination=dest.name, trigger_id=t.id or 0,
            trigger_name=t.name, rule_id=t.rule_id, purpose=t.purpose,
            contact_key=identifier_for(dest.policy, self.contact_secret, t.patient_key), payload=payload,
            occurred_at=datetime.fromtimestamp(t.fired_at or t.due_at, tz=timezone.utc), attempt=d.attempts,
        )
        fields = ["contact_key", "trigger", "occurred_at", "trigger_id", "rule_id", "purpose"] + [k for k in kept if k != "purpose"]
        base["fields"] = fields
        return Claimed(**base, outbound=ob, patient_key=t.patient_key, trigger=tinfo)

    def _opted_out(self, s: Session, t: TriggerRow, dest: Destination) -> str | None:
        if not t.patient_key:
            return None
        rows = s.exec(
            select(Suppression).where(Suppression.patient_key == t.patient_key, Suppression.revoked_at.is_(None))  # type: ignore[union-attr]
        ).all()
        for r in rows:
            if (r.destination in (None, dest.name)) and (r.purpose in (None, t.purpose)):
                return f"opt-out: {r.reason}"
        return None

    # -- send -------------------------------------------------------------
    async def run_once(self, limit: int = 200) -> int:
        claimed = await asyncio.to_thread(self.claim, limit)
        if not claimed:
            return 0
        rs = self.ruleset()
        results: list[tuple[Claimed, Outcome | None, float]] = []
        groups: dict[str, list[Claimed]] = defaultdict(list)
        for c in claimed:
            if c.outbound is None:
                results.append((c, None, 0.0))
            else:
                groups[c.destination].append(c)
        ledger_hits = await asyncio.to_thread(self._ledger_hits, [c.outbound.idempotency_key for g in groups.values() for c in g if c.outbound])
        tasks = []
        for name, items in groups.items():
            dest = rs.destinations[name]
            conn = self._connector(dest)
            todo = []
            for c in items:
                if c.outbound and c.outbound.idempotency_key in ledger_hits and not conn.native_dedup:
                    results.append((c, Delivered(None, "already sent (send ledger)"), 0.0))
                else:
                    todo.append(c)
            sem = asyncio.Semaphore(conn.max_concurrency)
            for i in range(0, len(todo), conn.max_batch):
                tasks.append(self._send(conn, todo[i : i + conn.max_batch], sem, name))
        for batch in await asyncio.gather(*tasks):
            results.extend(batch)
        if self.fault_hook:
            self.fault_hook("delivery.after_send")
        await asyncio.to_thread(self.record, results)
        return len(claimed)

    async def _send(self, conn: Connector, items: list[Claimed], sem: asyncio.Semaphore, name: str) -> list[tuple[Claimed, Outcome | None, float]]:
        async with sem:
            wait = self.buckets[name].take(len(items))
            if wait > 0:
                await asyncio.sleep(min(wait, 5.0))
            t0 = time.perf_counter()
            try:
                outcomes = await conn.send_batch([c.outbound for c in items if c.outbound])
            except Exception as exc:  # a connector bug must not lose the delivery
                from .registry import Retry

                outcomes = [Retry(f"connector error: {type(exc).__name__}: {exc}") for _ in items]
            ms = (time.perf_counter() - t0) * 1000
            for o in outcomes:
                self.breakers[name].record(o)
            if len(outcomes) != len(items):
                outcomes = [Permanent("connector returned the wrong number of outcomes")] * len(items)
            return [(c, o, ms) for c, o in zip(items, outcomes)]

    def _ledger_hits(self, keys: list[str]) -> set[str]:
        if not keys:
            return set()
        with Session(self.engine) as s:
            return set(s.exec(select(SendLedger.idempotency_key).where(SendLedger.idempotency_key.in_(keys))).all())  # type: ignore[attr-defined]

    def record(self, results: list[tuple[Claimed, Outcome | None, float]]) -> None:
        rs = self.ruleset()
        now = self.clock().timestamp()
        with Session(self.engine, expire_on_commit=False) as s:
            for c, outcome, ms in results:
                d = s.get(DeliveryRow, c.delivery_id)
                if d is None:
                    continue
                d.updated_at, d.locked_until = now, None
                if outcome is None:
                    d.status, d.last_error = c.skip_status or "suppressed", c.skip_reason
                    s.add(DeliveryAttempt(delivery_id=d.id or 0, at=now, outcome=d.status, error=c.skip_reason))
                    s.add(d)
                    continue
                dest = rs.destinations.get(d.destination)
                dec = decide(outcome, d.attempts, max_attempts=dest.max_attempts if dest else 5,
                             base_s=dest.backoff_base_s if dest else 30.0, max_s=dest.backoff_max_s if dest else 3600.0)
                code = getattr(outcome, "status_code", None)
                s.add(DeliveryAttempt(delivery_id=d.id or 0, at=now, outcome=type(outcome).__name__.lower(), status_code=code,
                                      error=None if isinstance(outcome, Delivered) else getattr(outcome, "reason", ""), duration_ms=ms))
                d.last_status_code = code
                if dec.status == "delivered":
                    d.status, d.delivered_at, d.last_error = "delivered", now, None
                    assert c.outbound is not None
                    body = orjson.dumps(c.outbound.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
                    s.add(Disclosure(delivery_id=d.id or 0, trigger_id=c.trigger.get("id") or 0, patient_key=c.patient_key,
                                     destination=d.destination, fields=orjson.dumps(c.fields).decode(),
                                     body_sha256=hashlib.sha256(body).hexdigest(), purpose=c.trigger.get("purpose", ""),
                                     rule_id=c.trigger.get("rule_id", ""), ruleset_version=c.trigger.get("ruleset_version", ""), sent_at=now))
                    if not self.connectors.get(d.destination) or not self.connectors[d.destination].native_dedup:
                        if s.get(SendLedger, d.idempotency_key) is None:
                            s.add(SendLedger(idempotency_key=d.idempotency_key, destination=d.destination, sent_at=now))
                    self.sent += 1
                elif dec.status == "pending":
                    d.status, d.next_attempt_at, d.last_error = "pending", now + (dec.next_in_s or 0.0), dec.reason
                else:
                    d.status, d.last_error = "dead", dec.reason
                    if "disabled" in dec.reason and s.get(KeyValue, f"destination.disabled.{d.destination}") is None:
                        s.add(KeyValue(key=f"destination.disabled.{d.destination}", value=orjson.dumps({"reason": dec.reason}).decode(), updated_at=now))
                    log.warning("dead letter", extra={"action": "delivery.dead", "delivery_id": d.id, "destination": d.destination})
                s.add(d)
            s.commit()


def replay(engine: Engine, *, delivery_id: int | None = None, destination: str | None = None, status: str = "dead") -> int:
    """Put dead-lettered (or suppressed) deliveries back to pending; return how many."""
    now = time.time()
    with Session(engine) as s:
        stmt = select(DeliveryRow).where(DeliveryRow.status == status)
        if delivery_id is not None:
            stmt = stmt.where(DeliveryRow.id == delivery_id)
        if destination:
            stmt = stmt.where(DeliveryRow.destination == destination)
        rows = list(s.exec(stmt))
        for d in rows:
            d.status, d.next_attempt_at, d.attempts, d.updated_at = "pending", now, 0, now
            s.add(d)
        if destination:
            kv = s.get(KeyValue, f"destination.disabled.{destination}")
            if kv is not None:
                s.delete(kv)
        s.commit()
        return len(rows)
