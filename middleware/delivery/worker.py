"""The durable delivery worker: claim due deliveries, re-check consent and policy at
send time, project the payload (minimum necessary), send through the connector, then
record the attempt, the disclosure and the next retry in one transaction.

At-least-once, with two recovery modes for a crash between sending and recording
(``Destination.dedup``):

* ``receiver`` (Segment ``messageId``, Iterable ``id``, Standard Webhooks
  ``webhook-id``): the lease expires, the delivery is claimed again and re-sent with
  the same idempotency key, which the destination drops as a duplicate.
* ``ledger`` (SFMC, HubSpot, Braze): a :class:`SendIntent` row is committed before
  the send; finding it on the next claim means the outcome is unknown, so the worker
  does not send twice: the delivery becomes ``unconfirmed`` (replay forces a resend)
  and a disclosure is recorded as ``unconfirmed``. The :class:`SendLedger` also stops
  a replay of an already-delivered key.

Paused destinations (circuit open, static credentials refused, 410 Gone, disabled in
config) are excluded in SQL, so their backlog never starves the others.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

import httpx
import orjson
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, or_, select

from ..config.destinations import Destination
from ..storage.db import is_sqlite, write_lock
from ..storage.tables import (
    DeliveryAlert, DeliveryAttempt, DeliveryRow, Disclosure, KeyValue, SendIntent, SendLedger, TriggerRow,
)
from . import capture
from .gate import send_time_block
from .policy import identifier_for, project
from .registry import (
    AuthFailure, Connector, Delivered, Disable, Outbound, Outcome, Permanent, RateLimit, Retry, SecretSource,
    connector_types,
)
from .retry import CircuitBreaker, TokenBucket, decide

if TYPE_CHECKING:  # the rule set is passed in; delivery never imports the rules stage
    from ..rules.load import RuleSet

log = logging.getLogger("careloop.delivery")

LEASE_S = 120.0
DISABLED = "destination.disabled."  # KeyValue prefix: 410 Gone (endpoint asked to be removed)
PAUSED = "destination.paused."  # KeyValue prefix: static credentials refused (circuit open until resumed)


@dataclass
class Claimed:
    delivery_id: int
    attempt: int
    destination: str
    idempotency_key: str
    outbound: Outbound | None  # None when suppressed / blocked before sending
    fields: list[str]
    patient_key: str | None
    trigger: dict[str, Any]
    skip_reason: str | None = None
    skip_status: str | None = None


@dataclass
class Sent:
    """One claimed delivery after the send (or the skip): outcome, timing and what went on the wire."""

    claimed: Claimed
    outcome: Outcome | None
    ms: float = 0.0
    request: capture.SentRequest | None = None
    fields: list[str] = field(default_factory=list)


def receiver_dedups(dest: Destination, conn_cls: type[Connector]) -> bool:
    """True when re-sending the same idempotency key is harmless for ``dest``."""
    if dest.dedup != "auto":
        return dest.dedup == "receiver"
    return conn_cls.native_dedup or conn_cls.type_name == "webhook"


class DeliveryWorker:
    def __init__(
        self,
        engine: Engine,
        ruleset: Callable[[], "RuleSet"],
        *,
        contact_secret: str,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        http: httpx.AsyncClient | None = None,
        secrets: SecretSource | None = None,
        link_base: str = "http://127.0.0.1:8080",
        fault_hook: Callable[[str], None] | None = None,
        consent_check: Callable[[Session, str | None, str, str], str | None] | None = None,
        lease_s: float = LEASE_S,
    ) -> None:
        self.engine = engine
        self.ruleset = ruleset
        self.contact_secret = contact_secret
        self.clock = clock
        self.http = http
        if http is not None:
            capture.install(http)
        self.secrets = secrets or SecretSource()
        self.link_base = link_base.rstrip("/")
        self.fault_hook = fault_hook
        self.consent_check = consent_check
        self.lease_s = lease_s
        self.connectors: dict[str, Connector] = {}
        self.breakers: dict[str, CircuitBreaker] = defaultdict(CircuitBreaker)
        self.buckets: dict[str, TokenBucket] = {}
        self._conn_version: str | None = None
        self.sent = 0
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

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
                capture.install(self.http)
            c = cls(dest.name, cls.Config.model_validate(dest.config), self.http, self.secrets, self.clock)
            self.connectors[dest.name] = c
            limit = cls.rate_limit if dest.rate_per_s is None else RateLimit(dest.rate_per_s, max(1, int(dest.rate_per_s)))
            self.buckets.setdefault(dest.name, TokenBucket(limit))
        return c

    async def aclose(self) -> None:
        for c in self.connectors.values():
            await c.aclose()
        if self.http is not None:
            await self.http.aclose()

    # -- claim ------------------------------------------------------------
    def _blocked(self, s: Session, rs: "RuleSet") -> tuple[set[str], dict[str, int]]:
        """(destinations not to claim for at all, destinations limited to a probe of N)."""
        blocked = {n for n, d in rs.destinations.items() if not d.enabled}
        kvs = s.exec(select(KeyValue.key).where(or_(col(KeyValue.key).startswith(DISABLED), col(KeyValue.key).startswith(PAUSED)))).all()
        paused = {k.split(".", 2)[2] for k in kvs}
        blocked |= paused
        probes: dict[str, int] = {}
        for name, br in self.breakers.items():
            if br.state == "open-auth" and name not in paused:
                br.reset()  # an operator resumed the destination
            b = br.budget()
            if b == 0:
                blocked.add(name)
            elif b is not None:
                probes[name] = b
        return blocked, probes

    def claim(self, limit: int = 200) -> list[Claimed]:
        """Lease up to ``limit`` due deliveries and build what to send (or why not)."""
        with write_lock(self.engine):
            return self._claim(limit)

    def _claim(self, limit: int = 200) -> list[Claimed]:
        rs = self.ruleset()
        now_dt = self.clock()
        now = now_dt.timestamp()
        out: list[Claimed] = []
        with Session(self.engine, expire_on_commit=False) as s:
            blocked, probes = self._blocked(s, rs)
            stmt = (
                select(DeliveryRow)
                .where(
                    or_(
                        (DeliveryRow.status == "pending") & (DeliveryRow.next_attempt_at <= now),
                        (DeliveryRow.status == "sending") & (col(DeliveryRow.locked_until) < now),
                    )
                )
                .order_by(col(DeliveryRow.next_attempt_at))
                .limit(limit)
            )
            if blocked:
                stmt = stmt.where(col(DeliveryRow.destination).not_in(sorted(blocked)))
            if not is_sqlite(self.engine):
                stmt = stmt.with_for_update(skip_locked=True)
            self._release_dead_owners(s, now)
            taken: dict[str, int] = defaultdict(int)
            for d in s.exec(stmt):
                if d.destination in probes and taken[d.destination] >= probes[d.destination]:
                    continue
                taken[d.destination] += 1
                recovering = d.status == "sending"
                t = s.get(TriggerRow, d.trigger_id)
                d.status, d.locked_until, d.attempts, d.updated_at = "sending", now + self.lease_s, d.attempts + 1, now
                d.locked_by = self.owner
                s.add(d)
                c = self._build(s, d, t, rs.destinations.get(d.destination), now_dt)
                if c.outbound is not None:
                    self._intent(s, d, c, rs, now, recovering)
                out.append(c)
            s.commit()
        return out

    def _release_dead_owners(self, s: Session, now: float) -> None:
        """Expire leases held by a worker process on this host that no longer exists (killed mid-send)."""
        host = socket.gethostname() + ":"
        owners = s.exec(select(DeliveryRow.locked_by).where(
            DeliveryRow.status == "sending", col(DeliveryRow.locked_until) >= now,
            col(DeliveryRow.locked_by).startswith(host)).distinct()).all()
        for owner in owners:
            if not owner or owner == self.owner:
                continue
            try:
                os.kill(int(owner.split(":")[1]), 0)
                continue  # alive: its lease stands
            except ProcessLookupError:
                pass
            except (PermissionError, ValueError, IndexError):
                continue
            for d in s.exec(select(DeliveryRow).where(DeliveryRow.locked_by == owner, DeliveryRow.status == "sending")):
                d.locked_until = now - 1
                s.add(d)
            s.flush()

    def _intent(self, s: Session, d: DeliveryRow, c: Claimed, rs: "RuleSet", now: float, recovering: bool) -> None:
        """Ledger-mode destinations: never send twice after a crash; note the send before it starts."""
        dest = rs.destinations[d.destination]
        if receiver_dedups(dest, connector_types()[dest.type]):
            return
        if s.get(SendIntent, d.idempotency_key) is not None:
            c.skip_status = "unconfirmed"
            c.skip_reason = ("outcome unknown: the worker stopped after sending began; not re-sent because "
                             f"{d.destination} does not de-duplicate (send ledger); replay to force a resend")
            return
        s.add(SendIntent(idempotency_key=d.idempotency_key, delivery_id=d.id or 0, destination=d.destination, started_at=now))

    def _build(self, s: Session, d: DeliveryRow, t: TriggerRow | None, dest: Destination | None, now: datetime) -> Claimed:
        base: dict[str, Any] = dict(delivery_id=d.id or 0, attempt=d.attempts, destination=d.destination,
                                    idempotency_key=d.idempotency_key, fields=[])
        if t is None or dest is None:
            return Claimed(**base, outbound=None, patient_key=None, trigger={}, skip_status="dead",
                           skip_reason="trigger or destination no longer exists")
        tinfo = {"id": t.id, "rule_id": t.rule_id, "ruleset_version": t.ruleset_version, "purpose": t.purpose, "name": t.name}
        block = send_time_block(s, t, dest, now)
        if block is None and self.consent_check is not None:
            extra = self.consent_check(s, t.patient_key, dest.name, t.purpose)
            block = ("suppressed", extra) if extra else None
        if block is not None:
            return Claimed(**base, outbound=None, patient_key=t.patient_key, trigger=tinfo,
                           skip_status=block[0], skip_reason=block[1])
        proj = project(orjson.loads(t.payload), dest.policy)
        payload = dict(proj.payload)
        if dest.policy.mode == "thin":
            payload = {"link": f"{self.link_base}/api/triggers/{t.id}"}
        ob = Outbound(
            delivery_id=d.id or 0, idempotency_key=d.idempotency_key, destination=dest.name, trigger_id=t.id or 0,
            trigger_name=t.name, rule_id=t.rule_id, purpose=t.purpose,
            contact_key=identifier_for(dest.policy, self.contact_secret, t.patient_key), payload=payload,
            occurred_at=datetime.fromtimestamp(t.fired_at or t.due_at, tz=timezone.utc), attempt=d.attempts,
        )
        base["fields"] = ["contact_key", "trigger_name", "occurred_at"] + sorted(payload if dest.policy.mode == "thin" else proj.fields)
        return Claimed(**base, outbound=ob, patient_key=t.patient_key, trigger=tinfo)

    # -- send -------------------------------------------------------------
    async def run_once(self, limit: int = 200) -> int:
        """Claim, send and record one round; return how many deliveries were handled."""
        claimed = await asyncio.to_thread(self.claim, limit)
        if not claimed:
            return 0
        rs = self.ruleset()
        results: list[Sent] = []
        groups: dict[str, list[Claimed]] = defaultdict(list)
        for c in claimed:
            if c.outbound is None or c.skip_status:
                results.append(Sent(c, None))
            else:
                groups[c.destination].append(c)
        keys = [c.idempotency_key for g in groups.values() for c in g]
        ledger_hits = await asyncio.to_thread(self._ledger_hits, keys)
        tasks = []
        for name, items in groups.items():
            dest = rs.destinations[name]
            conn = self._connector(dest)
            ledger_mode = not receiver_dedups(dest, type(conn))
            todo = []
            for c in items:
                if ledger_mode and c.idempotency_key in ledger_hits:
                    results.append(Sent(c, Delivered(None, "already sent (send ledger)")))
                else:
                    todo.append(c)
            sem = asyncio.Semaphore(dest.max_concurrency or conn.max_concurrency)
            for i in range(0, len(todo), conn.max_batch):
                tasks.append(self._send(conn, todo[i : i + conn.max_batch], sem, name))
        for batch in await asyncio.gather(*tasks):
            results.extend(batch)
        if self.fault_hook:
            self.fault_hook("delivery.after_send")
        await asyncio.to_thread(self.record, results)
        return len(claimed)

    async def _send(self, conn: Connector, items: list[Claimed], sem: asyncio.Semaphore, name: str) -> list[Sent]:
        async with sem:
            if not self.breakers[name].allow():  # opened by an earlier batch of this round: do not send
                return [Sent(c, Retry("circuit open: not sent", after_s=self.breakers[name].cool_s)) for c in items]
            wait = self.buckets[name].take(len(items) if conn.max_batch == 1 else 1)
            if wait > 0:
                await asyncio.sleep(min(wait, 5.0))
            t0 = time.perf_counter()
            outbound = [c.outbound for c in items if c.outbound]
            with capture.capturing() as requests:
                try:
                    outcomes = await conn.send_batch(outbound)
                except Exception as exc:  # a connector bug must not lose the delivery
                    outcomes = [Retry(f"connector error: {type(exc).__name__}") for _ in items]
            ms = (time.perf_counter() - t0) * 1000
            if len(outcomes) != len(items):
                outcomes = [Permanent("connector returned the wrong number of outcomes")] * len(items)
            for o in outcomes:
                self.breakers[name].record(o)
            markers = [{m for m in (c.idempotency_key, c.outbound.contact_key if c.outbound else "", _hubspot_uuid(c.idempotency_key)) if m}
                       for c in items]
            out = []
            for i, (c, o) in enumerate(zip(items, outcomes)):
                att = capture.attribute(requests, markers, i) if requests else capture.Attribution(None, [])
                out.append(Sent(c, o, ms, att.request, att.fields))
            return out

    def _ledger_hits(self, keys: list[str]) -> set[str]:
        if not keys:
            return set()
        with Session(self.engine) as s:
            return set(s.exec(select(SendLedger.idempotency_key).where(col(SendLedger.idempotency_key).in_(keys))).all())

    # -- record -----------------------------------------------------------
    def record(self, results: list[Sent]) -> None:
        """One transaction: attempts, statuses, retries, disclosures, ledger, alerts."""
        with write_lock(self.engine):
            self._record(results)

    def _record(self, results: list[Sent]) -> None:
        rs = self.ruleset()
        now = self.clock().timestamp()
        with Session(self.engine, expire_on_commit=False) as s:
            for r in results:
                c = r.claimed
                d = s.get(DeliveryRow, c.delivery_id)
                if d is None:
                    continue
                d.updated_at, d.locked_until = now, None
                if r.outcome is None:
                    self._record_skip(s, d, c, now)
                    continue
                intent = s.get(SendIntent, d.idempotency_key)
                if intent is not None:
                    s.delete(intent)
                self._record_outcome(s, d, r, rs.destinations.get(d.destination), now)
            s.commit()

    def _record_skip(self, s: Session, d: DeliveryRow, c: Claimed, now: float) -> None:
        d.status, d.last_error = c.skip_status or "suppressed", c.skip_reason
        s.add(DeliveryAttempt(delivery_id=d.id or 0, at=now, outcome=d.status, error=c.skip_reason))
        s.add(d)
        if d.status == "unconfirmed":
            intent = s.get(SendIntent, d.idempotency_key)
            if intent is not None:  # the delivery's status now carries "possibly sent"
                s.delete(intent)
            s.add(self._disclosure(d, c, now, None, c.fields, outcome="unconfirmed"))
            log.warning("delivery unconfirmed", extra={"action": "delivery.unconfirmed", "delivery_id": d.id,
                                                         "destination": d.destination})

    def _record_outcome(self, s: Session, d: DeliveryRow, r: Sent, dest: Destination | None, now: float) -> None:
        c, outcome = r.claimed, r.outcome
        assert outcome is not None
        dec = decide(outcome, d.attempts, max_attempts=dest.max_attempts if dest else 5,
                     base_s=dest.backoff_base_s if dest else 30.0, max_s=dest.backoff_max_s if dest else 3600.0)
        code = getattr(outcome, "status_code", None)
        s.add(DeliveryAttempt(delivery_id=d.id or 0, at=now, outcome=type(outcome).__name__.lower(), status_code=code,
                              error=None if isinstance(outcome, Delivered) else getattr(outcome, "reason", ""), duration_ms=r.ms))
        d.last_status_code = code
        if dec.status == "delivered":
            d.status, d.delivered_at, d.last_error = "delivered", now, None
            already = isinstance(outcome, Delivered) and outcome.detail.startswith("already sent")
            if not already:
                s.add(self._disclosure(d, c, now, r.request, r.fields or c.fields, outcome="delivered"))
                self.sent += 1
            if s.get(SendLedger, d.idempotency_key) is None:
                s.add(SendLedger(idempotency_key=d.idempotency_key, destination=d.destination, sent_at=now))
        elif dec.status == "pending":
            d.status, d.next_attempt_at, d.last_error = "pending", now + (dec.next_in_s or 0.0), dec.reason
        else:
            d.status, d.last_error = "dead", dec.reason
            log.warning("dead letter", extra={"action": "delivery.dead", "delivery_id": d.id, "destination": d.destination})
        if isinstance(outcome, AuthFailure):
            self._pause(s, d, PAUSED, "auth-failure", f"static credentials refused ({outcome.reason}); circuit open until resumed", now)
        elif isinstance(outcome, Disable):
            self._pause(s, d, DISABLED, "destination-disabled", f"endpoint asked to be removed ({outcome.reason})", now)
        s.add(d)

    def _pause(self, s: Session, d: DeliveryRow, prefix: str, kind: str, message: str, now: float) -> None:
        key = prefix + d.destination
        if s.get(KeyValue, key) is not None:
            return
        s.add(KeyValue(key=key, value=orjson.dumps({"reason": message, "since": now, "delivery_id": d.id}).decode(), updated_at=now))
        s.add(DeliveryAlert(kind=kind, destination=d.destination, delivery_id=d.id, message=message, created_at=now))
        log.error("destination paused", extra={"action": f"delivery.{kind}", "destination": d.destination,
                                                "delivery_id": d.id, "circuit": "open"})

    def _disclosure(self, d: DeliveryRow, c: Claimed, now: float, req: capture.SentRequest | None,
                    fields: list[str], *, outcome: str) -> Disclosure:
        if req is not None:
            sha, size, target = req.sha256, req.length, req.target
        elif c.outbound is not None and outcome == "delivered":  # a connector that made no HTTP request
            body = orjson.dumps(c.outbound.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
            sha, size, target = hashlib.sha256(body).hexdigest(), len(body), "(no HTTP request captured)"
        else:
            sha, size, target = "", None, None
        return Disclosure(
            delivery_id=d.id or 0, trigger_id=c.trigger.get("id") or 0, patient_key=c.patient_key,
            destination=d.destination, fields=orjson.dumps(fields).decode(), body_sha256=sha,
            purpose=c.trigger.get("purpose", ""), rule_id=c.trigger.get("rule_id", ""),
            ruleset_version=c.trigger.get("ruleset_version", ""), sent_at=now, outcome=outcome,
            body_bytes=size, request_target=target, attempt=d.attempts,
        )


def _hubspot_uuid(key: str) -> str:
    from .connectors.hubspot import event_uuid

    return event_uuid(key)


def replay(engine: Engine, *, delivery_id: int | None = None, destination: str | None = None, status: str = "dead",
           rule_id: str | None = None, reason_contains: str | None = None) -> int:
    """Compatibility wrapper for :func:`middleware.delivery.admin.replay`."""
    from .admin import replay as _replay

    return _replay(engine, delivery_id=delivery_id, destination=destination, status=status, rule_id=rule_id,
                   reason_contains=reason_contains)
