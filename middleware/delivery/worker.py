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
import random
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

from .. import netpolicy
from ..config.destinations import Destination
from ..storage.queries import delivery as q
from ..storage.queries.delivery import DISABLED, PAUSED
from ..storage.sql import UnitOfWork, unit
from ..storage.queries import exits as xq
from ..storage.statuses import Confirmation, DeliveryKind, DeliveryStatus, DisclosureOutcome
from . import capture, transport
from .gate import send_time_blocks
from ..config.policy import identifier_for, outgoing
from .registry import (
    AuthFailure, Connector, Delivered, Disable, ExitCheck, Outbound, Outcome, Permanent, RateLimit, Retry, SecretSource,
    connector_types,
)
from .retry import CircuitBreaker, TokenBucket, decide

if TYPE_CHECKING:  # the rule set is passed in; delivery never imports the rules stage
    from ..rules.load import RuleSet

log = logging.getLogger("careloop.delivery")

LEASE_S = 120.0
#: how often the worker looks for exits whose confirmation is due (each has its own poll interval)
CONFIRM_EVERY_S = 5.0
__all__ = ["DISABLED", "PAUSED", "DeliveryWorker", "LEASE_S", "replay"]


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
    kind: str = DeliveryKind.ENTRY


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
        consent_check: Callable[[UnitOfWork, str | None, str, str], str | None] | None = None,
        lease_s: float = LEASE_S,
        own_ports: tuple[int, ...] = (),
        transport_factory: Callable[[netpolicy.NetPolicy], httpx.AsyncBaseTransport] | None = None,
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
        self.own_ports = own_ports  # careloop's listeners: never a destination, even on loopback
        #: builds each destination's transport from its policy (tests: ``lambda _p: httpx.MockTransport(...)``)
        self.transport_factory = transport_factory
        self.connectors: dict[str, Connector] = {}
        self._clients: dict[str, httpx.AsyncClient] = {}
        self.breakers: dict[str, CircuitBreaker] = defaultdict(CircuitBreaker)
        self.buckets: dict[str, TokenBucket] = {}
        self._conn_version: str | None = None
        self.sent = 0
        self._rng = random.Random()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._owners_checked_at = float("-inf")
        self._confirm_at = float("-inf")

    # -- connectors -------------------------------------------------------
    def _connector(self, dest: Destination) -> Connector:
        rs = self.ruleset()
        if self._conn_version != rs.version:
            self.connectors.clear()
            self._conn_version = rs.version
        c = self.connectors.get(dest.name)
        if c is None:
            cls = connector_types()[dest.type]
            c = cls(dest.name, cls.Config.model_validate(dest.config), self._client(dest), self.secrets, self.clock)
            c.exit_settings = dest.exit
            self.connectors[dest.name] = c
            limit = cls.rate_limit if dest.rate_per_s is None else RateLimit(dest.rate_per_s, max(1, int(dest.rate_per_s)))
            self.buckets.setdefault(dest.name, TokenBucket(limit))
        return c

    def _client(self, dest: Destination) -> httpx.AsyncClient:
        """The HTTP client for ``dest``: the one given to the worker, else one per destination, kept across
        rounds (keep-alive), so a destination's requests only look through its own connections. Its
        connections pass the outbound policy (:mod:`middleware.netpolicy`) at connect time; it sends
        through aiohttp's pool (:mod:`.transport`, issue 16), or through ``transport_factory`` when given."""
        if self.http is not None:
            return self.http
        key = f"{dest.name}|{dest.allow_private_network}"
        client = self._clients.get(key)
        if client is None:
            pol = netpolicy.policy(dest.allow_private_network, *self.own_ports)
            if self.transport_factory is None:
                client = transport.delivery_client(pol, timeout=10.0)
            else:
                client = httpx.AsyncClient(transport=self.transport_factory(pol), trust_env=False, timeout=10.0)
            self._clients[key] = client
            capture.install(client)
        return client

    async def aclose(self) -> None:
        for c in self.connectors.values():
            await c.aclose()
        if self.http is not None:
            await self.http.aclose()
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
        self.connectors.clear()  # they hold closed clients: rebuilt if the worker runs again

    # -- claim ------------------------------------------------------------
    def _blocked(self, u: UnitOfWork, rs: "RuleSet") -> tuple[set[str], dict[str, int]]:
        """(destinations not to claim for at all, destinations limited to a probe of N)."""
        blocked = {n for n, d in rs.destinations.items() if not d.enabled}
        paused = q.paused(u)
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
        """Lease up to ``limit`` due deliveries and build what to send (or why not). One write
        transaction (the lease is committed before anything is sent)."""
        rs = self.ruleset()
        now_dt = self.clock()
        now = now_dt.timestamp()
        with unit(self.engine, write=True) as u:
            blocked, probes = self._blocked(u, rs)
            if time.monotonic() - self._owners_checked_at >= 2.0:  # a query per claim otherwise; at start, then every 2 s
                self._owners_checked_at = time.monotonic()
                self._release_dead_owners(u, now)
            taken: dict[str, int] = defaultdict(int)
            rows = []
            for d in q.claim(u, now=now, blocked=sorted(blocked), limit=limit):
                if d.destination in probes and taken[d.destination] >= probes[d.destination]:
                    continue
                taken[d.destination] += 1
                rows.append(d)
            if not rows:
                return []
            q.lease(u, [d.id for d in rows], now=now, until=now + self.lease_s, owner=self.owner)
            triggers = q.triggers_of(u, sorted({d.trigger_id for d in rows}))
            out = self._build_all(u, rows, triggers, rs, now_dt)
            self._intents(u, out, rs, now)
        return out

    def _release_dead_owners(self, u: UnitOfWork, now: float) -> None:
        """Expire leases held by a worker process on this host that no longer exists (killed mid-send)."""
        for owner in q.lease_owners_on_host(u, socket.gethostname() + ":", now):
            if not owner or owner == self.owner:
                continue
            try:
                os.kill(int(owner.split(":")[1]), 0)
                continue  # alive: its lease stands
            except ProcessLookupError:
                pass
            except (PermissionError, ValueError, IndexError):
                continue
            q.expire_leases_of(u, owner, now)

    def _intents(self, u: UnitOfWork, claimed: list[Claimed], rs: "RuleSet", now: float) -> None:
        """Ledger-mode destinations: never send twice after a crash; note the send before it starts."""
        types = connector_types()
        ledger = [c for c in claimed if c.outbound is not None
                  and not receiver_dedups(rs.destinations[c.destination], types[rs.destinations[c.destination].type])]
        if not ledger:
            return
        keys = [c.idempotency_key for c in ledger]
        found = q.keys_in(u, "delivery.intents_of", keys)
        new = []
        for c in ledger:
            if c.idempotency_key in found:
                c.skip_status = DeliveryStatus.UNCONFIRMED
                c.skip_reason = ("outcome unknown: the worker stopped after sending began; not re-sent because "
                                 f"{c.destination} does not de-duplicate (send ledger); replay to force a resend")
            else:
                new.append({"idempotency_key": c.idempotency_key, "delivery_id": c.delivery_id,
                            "destination": c.destination, "started_at": now})
        u.many("delivery.intent_add", new)

    def _build_all(self, u: UnitOfWork, rows: list[q.DueDelivery], triggers: dict[int, q.TriggerToSend], rs: "RuleSet",
                   now: datetime) -> list[Claimed]:
        """What to send for each leased delivery (or why not), in claim order."""
        out: list[Claimed] = []
        checks: list[tuple[q.TriggerToSend, Destination]] = []
        where: list[int] = []
        for d in rows:
            t, dest = triggers.get(d.trigger_id), rs.destinations.get(d.destination)
            c = Claimed(delivery_id=d.id, attempt=d.attempts + 1, destination=d.destination,
                        idempotency_key=d.idempotency_key, outbound=None, fields=[],
                        patient_key=None if t is None or dest is None else t.patient_key,
                        trigger={} if t is None or dest is None else
                        {"id": t.id, "rule_id": t.rule_id, "ruleset_version": t.ruleset_version, "purpose": t.purpose,
                         "name": t.name})
            c.kind = d.kind
            out.append(c)
            if t is None or dest is None:
                c.skip_status, c.skip_reason = DeliveryStatus.DEAD, "trigger or destination no longer exists"
            elif d.kind == DeliveryKind.EXIT:
                self._build_exit(c, t, dest)
            else:
                checks.append((t, dest))
                where.append(len(out) - 1)
        blocks = send_time_blocks(u, checks, now) if checks else []
        ckeys: dict[tuple[str, str], str] = {}
        for i, (t, dest), block in zip(where, checks, blocks):
            c = out[i]
            if block is None and self.consent_check is not None:
                extra = self.consent_check(u, t.patient_key, dest.name, t.purpose)
                block = (DeliveryStatus.SUPPRESSED, extra) if extra else None
            if block is not None:
                c.skip_status, c.skip_reason = block
                continue
            proj = outgoing(orjson.loads(t.payload), dest.policy, f"{self.link_base}/api/triggers/{t.id}")
            payload = dict(proj.payload)
            ck = (dest.policy.identifiers, t.patient_key or "")
            if ck not in ckeys:
                ckeys[ck] = identifier_for(dest.policy, self.contact_secret, t.patient_key)
            c.outbound = Outbound(
                delivery_id=c.delivery_id, idempotency_key=c.idempotency_key, destination=dest.name, trigger_id=t.id or 0,
                trigger_name=t.name, rule_id=t.rule_id, purpose=t.purpose, contact_key=ckeys[ck], payload=payload,
                occurred_at=datetime.fromtimestamp(t.fired_at or t.due_at, tz=timezone.utc), attempt=c.attempt,
            )
            c.fields = ["contact_key", "trigger_name", "occurred_at"] + sorted(proj.fields)
        return out

    def _build_exit(self, c: Claimed, t: q.TriggerToSend, dest: Destination) -> None:
        """An exit: sent whatever the hour, consent or opt-out (it ends contact, it starts none), and
        generic: the exit event's name, the pseudonymous key and ids, never a reason."""
        if dest.exit is None:
            c.skip_status, c.skip_reason = DeliveryStatus.DEAD, f"{dest.name} has no exit: configured any more"
            return
        c.outbound = Outbound(
            delivery_id=c.delivery_id, idempotency_key=c.idempotency_key, destination=dest.name, trigger_id=t.id or 0,
            trigger_name=dest.exit.event_name, rule_id=t.rule_id, purpose=t.purpose,
            contact_key=identifier_for(dest.policy, self.contact_secret, t.patient_key),
            payload={"journey": t.journey_id or t.rule_id, "trigger_id": t.id},
            occurred_at=self.clock(), attempt=c.attempt,
        )
        c.fields = ["contact_key", "exit_event", "journey", "trigger_id"]

    # -- send -------------------------------------------------------------
    async def run_once(self, limit: int = 200) -> int:
        """Claim, send and record one round; return how many deliveries were handled."""
        if time.monotonic() >= self._confirm_at:  # exits awaiting the vendor's confirmation, every few seconds
            self._confirm_at = time.monotonic() + CONFIRM_EVERY_S
            await self.confirm_once()
        claimed = await asyncio.to_thread(self.claim, limit)
        if not claimed:
            return 0
        rs = self.ruleset()
        results: list[Sent] = []
        groups: dict[tuple[str, str], list[Claimed]] = defaultdict(list)
        for c in claimed:
            if c.outbound is None or c.skip_status:
                results.append(Sent(c, None))
            else:
                groups[(c.destination, c.kind)].append(c)
        conns = {name: self._connector(rs.destinations[name]) for name, _ in groups}
        ledger_mode = {name: not receiver_dedups(rs.destinations[name], type(conn)) for name, conn in conns.items()}
        keys = [c.idempotency_key for (name, _), g in groups.items() if ledger_mode[name] for c in g]
        ledger_hits = await asyncio.to_thread(self._ledger_hits, keys) if keys else set()
        tasks = []
        sems: dict[str, asyncio.Semaphore] = {}
        for (name, kind), items in groups.items():
            dest = rs.destinations[name]
            conn = conns[name]
            todo = []
            for c in items:
                if ledger_mode[name] and c.idempotency_key in ledger_hits:
                    results.append(Sent(c, Delivered(None, "already sent (send ledger)")))
                else:
                    todo.append(c)
            sem = sems.setdefault(name, asyncio.Semaphore(dest.max_concurrency or conn.max_concurrency))
            size = conn.max_exit_batch if kind == DeliveryKind.EXIT else conn.max_batch
            for i in range(0, len(todo), size):
                tasks.append(self._send(conn, todo[i : i + size], sem, name))
        for batch in await asyncio.gather(*tasks):
            results.extend(batch)
        if self.fault_hook:
            self.fault_hook("delivery.after_send")
        await asyncio.to_thread(self.record, results)
        return len(claimed)

    async def confirm_once(self, limit: int = 200) -> int:
        """Poll the vendors for the exits they accepted asynchronously (Journey Builder's contact-exit
        status): confirmed, still pending (polled again), or unconfirmed after ``confirm_within_s`` or a
        refusal, which raises an alert (``careloop deliveries``, metrics, the console)."""
        rs = self.ruleset()
        now = self.clock().timestamp()
        with unit(self.engine) as u:
            due = xq.confirmations_due(u, now, limit)
            triggers = q.triggers_of(u, sorted({d.trigger_id for d in due})) if due else {}
        by_dest: dict[str, list[tuple[xq.PendingConfirmation, Claimed]]] = defaultdict(list)
        for d in due:
            dest, t = rs.destinations.get(d.destination), triggers.get(d.trigger_id)
            c = Claimed(delivery_id=d.id, attempt=0, destination=d.destination, idempotency_key=d.idempotency_key,
                        outbound=None, fields=[], patient_key=None, trigger={}, kind=DeliveryKind.EXIT)
            if dest is not None and t is not None:
                self._build_exit(c, t, dest)
            by_dest[d.destination].append((d, c))
        updates: dict[str, list[dict[str, Any]]] = defaultdict(list)
        alerts: list[dict[str, Any]] = []
        for name, pairs in by_dest.items():
            dest = rs.destinations.get(name)
            ready = [(d, c) for d, c in pairs if c.outbound is not None]
            checks: list[ExitCheck] = []
            if dest is not None and ready:
                conn = self._connector(dest)
                for i in range(0, len(ready), conn.max_exit_batch):
                    part = ready[i : i + conn.max_exit_batch]
                    try:
                        got = await conn.confirm_exits([c.outbound for _, c in part if c.outbound])
                    except Exception as exc:  # a vendor outage: ask again next time
                        got = [ExitCheck("pending", f"status check failed: {type(exc).__name__}") for _ in part]
                    checks.extend(got if len(got) == len(part) else [ExitCheck("pending", "wrong number of answers")] * len(part))
            answered = {d.id: chk for (d, _), chk in zip(ready, checks)}
            for d, _ in pairs:
                chk = answered.get(d.id, ExitCheck("failed", "destination or trigger no longer exists"))
                poll = dest.exit.poll_every_s if dest is not None and dest.exit is not None else 60.0
                if chk.state == "confirmed":
                    updates["exits.confirmed"].append({"p_id": d.id, "p_now": now})
                elif chk.state == "pending" and (d.confirm_by is None or now < d.confirm_by):
                    updates["exits.poll_later"].append({"p_id": d.id, "p_now": now, "p_next": now + poll})
                else:
                    why = chk.detail if chk.state == "failed" else f"not confirmed in time (last answer: {chk.detail or 'pending'})"
                    updates["exits.unconfirmed"].append({"p_id": d.id, "p_now": now, "p_error": why[:500]})
                    alerts.append({"kind": "exit-unconfirmed", "destination": name, "delivery_id": d.id,
                                   "message": f"exit not confirmed by {name}: {why}"[:500], "created_at": now})
                    log.error("exit unconfirmed", extra={"action": "delivery.exit_unconfirmed", "destination": name,
                                                         "delivery_id": d.id})
        if updates or alerts:
            with unit(self.engine, write=True) as u:
                for qname, rows in updates.items():
                    u.many(qname, rows)
                u.many("delivery.alert_add", alerts)
        return len(due)

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
                    if items[0].kind == DeliveryKind.EXIT:
                        outcomes = await conn.send_exits(outbound)
                    else:
                        outcomes = await conn.send_batch(outbound)
                except Exception as exc:  # a connector bug must not lose the delivery
                    outcomes = [Retry(f"connector error: {type(exc).__name__}") for _ in items]
            ms = (time.perf_counter() - t0) * 1000
            if len(outcomes) != len(items):
                outcomes = [Permanent("connector returned the wrong number of outcomes")] * len(items)
            for o in outcomes:
                self.breakers[name].record(o)
            if len(items) == 1 and len(requests) == 1:  # one item, one request: it carried the item (no markers needed)
                att = capture.attribute_single(requests[0])
                return [Sent(items[0], outcomes[0], ms, att.request, att.fields)]
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
        with unit(self.engine) as u:
            return q.keys_in(u, "delivery.ledger_of", keys)

    # -- record -----------------------------------------------------------
    def record(self, results: list[Sent]) -> None:
        """One write transaction: attempts, statuses, retries, disclosures, ledger, alerts."""
        rs = self.ruleset()
        now = self.clock().timestamp()
        with unit(self.engine, write=True) as u:
            rows = q.to_record(u, [r.claimed.delivery_id for r in results])
            rec = _Batch()
            for r in results:
                d = rows.get(r.claimed.delivery_id)
                if d is None:
                    continue
                if r.outcome is None:
                    self._record_skip(rec, d, r.claimed, now)
                else:
                    rec.intents_done.append(d.idempotency_key)
                    if r.claimed.kind == DeliveryKind.EXIT:
                        rec.exit_ids.add(d.id)
                    self._record_outcome(rec, d, r, rs.destinations.get(d.destination), now)
            self._write(u, rec, now, rs)

    @staticmethod
    def _tracks_outcomes(rs: Any) -> bool:
        """Does the rule set name goals (then deliveries mark their journey entries delivered)?"""
        return any(getattr(cr.rule, "goal", None) is not None for cr in getattr(rs, "rules", ()))

    def _write(self, u: UnitOfWork, rec: "_Batch", now: float, rs: Any = None) -> None:
        """The batch's statements: a few executemany calls, whatever the batch size."""
        if rec.intents_done:
            u.run("delivery.intents_done", keys=rec.intents_done)
        for name in (*q.OUTCOME_UPDATES, "exits.set_confirmation"):
            u.many(name, rec.updates.get(name, ()))
        if self._tracks_outcomes(rs):  # per-protocol: which journey entries were delivered (an exit is not one)
            u.many("delivery.outcome_delivered", [r for r in rec.updates.get("delivery.set_delivered", ())
                                                  if r["p_id"] not in rec.exit_ids])
        u.many("delivery.attempt_add", rec.attempts)
        u.many("delivery.disclosure_add", rec.disclosures)
        if rec.ledger:
            have = q.keys_in(u, "delivery.ledger_of", list(rec.ledger))
            u.many("delivery.ledger_add", [{"idempotency_key": k, "destination": dest, "sent_at": now}
                                           for k, dest in rec.ledger.items() if k not in have])
        for key, (d, kind, message) in rec.pauses.items():
            value = orjson.dumps({"reason": message, "since": now, "delivery_id": d.id}).decode()
            alert = {"kind": kind, "destination": d.destination, "delivery_id": d.id, "message": message, "created_at": now}
            if q.pause(u, key, value, alert, now):
                log.error("destination paused", extra={"action": f"delivery.{kind}", "destination": d.destination,
                                                        "delivery_id": d.id, "circuit": "open"})

    def _record_skip(self, rec: "_Batch", d: q.DeliveryToRecord, c: Claimed, now: float) -> None:
        status = c.skip_status or DeliveryStatus.SUPPRESSED
        rec.update("delivery.set_skipped", d.id, status=status, error=c.skip_reason, now=now)
        rec.attempts.append(_attempt(d.id, now, status, None, c.skip_reason, 0.0))
        if status == DeliveryStatus.UNCONFIRMED:
            rec.intents_done.append(d.idempotency_key)  # the delivery's status now carries "possibly sent"
            rec.disclosures.append(self._disclosure(d, c, now, None, c.fields, outcome=DisclosureOutcome.UNCONFIRMED))
            log.warning("delivery unconfirmed", extra={"action": "delivery.unconfirmed", "delivery_id": d.id,
                                                         "destination": d.destination})

    def _record_outcome(self, rec: "_Batch", d: q.DeliveryToRecord, r: Sent, dest: Destination | None, now: float) -> None:
        c, outcome = r.claimed, r.outcome
        assert outcome is not None
        dec = decide(outcome, d.attempts, max_attempts=dest.max_attempts if dest else 5,
                     base_s=dest.backoff_base_s if dest else 30.0, max_s=dest.backoff_max_s if dest else 3600.0,
                     rng=self._rng)
        code = getattr(outcome, "status_code", None)
        rec.attempts.append(_attempt(d.id, now, type(outcome).__name__.lower(), code,
                                     None if isinstance(outcome, Delivered) else getattr(outcome, "reason", ""), r.ms))
        if dec.status == DeliveryStatus.DELIVERED:
            rec.update("delivery.set_delivered", d.id, code=code, now=now)
            if isinstance(outcome, Delivered) and (outcome.confirmation or outcome.vendor_ref):
                pending = outcome.confirmation == Confirmation.PENDING
                ex = dest.exit if dest is not None else None
                within, poll = (ex.confirm_within_s, ex.poll_every_s) if ex is not None else (3600.0, 60.0)
                rec.update("exits.set_confirmation", d.id, confirmation=outcome.confirmation, ref=outcome.vendor_ref,
                           by=now + within if pending else None, next=now + poll if pending else now)
            already = isinstance(outcome, Delivered) and outcome.detail.startswith("already sent")
            if not already:
                rec.disclosures.append(self._disclosure(d, c, now, r.request, r.fields or c.fields,
                                                       outcome=DisclosureOutcome.DELIVERED))
                self.sent += 1
            rec.ledger.setdefault(d.idempotency_key, d.destination)
        elif dec.status == DeliveryStatus.PENDING:
            rec.update("delivery.set_retry", d.id, next=now + (dec.next_in_s or 0.0), error=dec.reason, code=code, now=now)
        else:
            rec.update("delivery.set_dead", d.id, error=dec.reason, code=code, now=now)
            log.warning("dead letter", extra={"action": "delivery.dead", "delivery_id": d.id, "destination": d.destination})
        if isinstance(outcome, AuthFailure):
            rec.pause(d, PAUSED, "auth-failure", f"static credentials refused ({outcome.reason}); circuit open until resumed")
        elif isinstance(outcome, Disable):
            rec.pause(d, DISABLED, "destination-disabled", f"endpoint asked to be removed ({outcome.reason})")

    def _disclosure(self, d: q.DeliveryToRecord, c: Claimed, now: float, req: capture.SentRequest | None,
                    fields: list[str], *, outcome: str) -> dict[str, Any]:
        if req is not None:
            sha, size, target = req.sha256, req.length, req.target
        elif c.outbound is not None and outcome == DisclosureOutcome.DELIVERED:  # a connector that made no HTTP request
            body = orjson.dumps(c.outbound.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
            sha, size, target = hashlib.sha256(body).hexdigest(), len(body), "(no HTTP request captured)"
        else:
            sha, size, target = "", None, None
        return {
            "delivery_id": d.id or 0, "trigger_id": c.trigger.get("id") or 0, "patient_key": c.patient_key,
            "destination": d.destination, "fields": orjson.dumps(fields).decode(), "body_sha256": sha,
            "purpose": c.trigger.get("purpose", ""), "rule_id": c.trigger.get("rule_id", ""),
            "ruleset_version": c.trigger.get("ruleset_version", ""), "sent_at": now, "outcome": outcome,
            "body_bytes": size, "request_target": target, "attempt": d.attempts,
        }


def _attempt(delivery_id: int, at: float, outcome: str, code: int | None, error: str | None, ms: float) -> dict[str, Any]:
    return {"delivery_id": delivery_id, "at": at, "outcome": outcome, "status_code": code, "error": error, "duration_ms": ms}


class _Batch:
    """What one record transaction writes, gathered first and then written with executemany."""

    def __init__(self) -> None:
        self.attempts: list[dict[str, Any]] = []
        self.disclosures: list[dict[str, Any]] = []
        self.intents_done: list[str] = []
        self.ledger: dict[str, str] = {}
        self.updates: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.pauses: dict[str, tuple[q.DeliveryToRecord, str, str]] = {}
        self.exit_ids: set[int] = set()

    def update(self, name: str, delivery_id: int, **values: Any) -> None:
        """Rows with the same kind of outcome share one executemany UPDATE (the query ``name``)."""
        self.updates[name].append({"p_id": delivery_id, **{"p_" + k: v for k, v in values.items()}})

    def pause(self, d: q.DeliveryToRecord, prefix: str, kind: str, message: str) -> None:
        self.pauses.setdefault(prefix + d.destination, (d, kind, message))


def _hubspot_uuid(key: str) -> str:
    from .connectors.hubspot import event_uuid

    return event_uuid(key)


def replay(engine: Engine, *, delivery_id: int | None = None, destination: str | None = None, status: str = DeliveryStatus.DEAD,
           rule_id: str | None = None, reason_contains: str | None = None) -> int:
    """Compatibility wrapper for :func:`middleware.delivery.admin.replay`."""
    from .admin import replay as _replay

    return _replay(engine, delivery_id=delivery_id, destination=destination, status=status, rule_id=rule_id,
                   reason_contains=reason_contains)
