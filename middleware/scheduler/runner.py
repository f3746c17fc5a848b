"""Fire due triggers: caps, authorization and opt-out checks, then one delivery row per
destination, in the same transaction that marks the trigger fired. Works in bounded
batches (never loads all pending triggers); on PostgreSQL rows are claimed with
``FOR UPDATE SKIP LOCKED`` so several workers share the work without firing twice."""
from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timezone
from typing import Callable

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from .patientctx import suppression_at_send
from ..rules.load import RuleSet
from ..storage.db import begin_write, is_sqlite, write_lock
from ..storage.tables import Authorization, DeliveryRow, Suppression, TriggerRow

log = logging.getLogger("careloop.scheduler")

DAY = 86400.0
WEEK = 7 * DAY
#: channels the TCPA counts together for the healthcare exemption caps
PHONE_CHANNELS = ("sms", "voice")


def idempotency_key(t: TriggerRow, destination: str) -> str:
    """Stable across retries, restarts and replays: patient, trigger, resource, version, destination."""
    raw = f"{t.patient_key}|{t.name}|{t.resource_key}|{t.resource_version}|{t.rule_id}|{destination}"
    if t.dedup_key:  # two triggers of one rule from one resource version (e.g. two CarePlan activities)
        raw += f"|{t.dedup_key}"
    return "cl_" + hashlib.sha256(raw.encode()).hexdigest()[:40]


class Scheduler:
    def __init__(
        self,
        engine: Engine,
        ruleset: Callable[[], RuleSet],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        batch: int = 500,
        on_deliveries: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.ruleset = ruleset
        self.clock = clock
        self.batch = batch
        self.on_deliveries = on_deliveries
        self.fired = 0
        self.fault_hook: Callable[[str], None] | None = None  # crash tests: CARELOOP_FAULT=scheduler.after_commit:N

    def next_due(self) -> float | None:
        with Session(self.engine) as s:
            return s.exec(select(func.min(TriggerRow.due_at)).where(TriggerRow.status == "pending")).first()

    def fire_due(self) -> int:
        """Fire up to ``batch`` due triggers; return how many were handled."""
        with write_lock(self.engine):
            return self._fire_due()

    def _fire_due(self) -> int:
        rs = self.ruleset()
        now = self.clock().timestamp()
        created = 0
        with Session(self.engine, expire_on_commit=False) as s:
            begin_write(s)  # SQLite: take the write lock first (read-then-write would fail under a concurrent commit)
            stmt = (
                select(TriggerRow)
                .where(TriggerRow.status == "pending", TriggerRow.due_at <= now)
                .order_by(TriggerRow.due_at)  # type: ignore[arg-type]
                .limit(self.batch)
            )
            if not is_sqlite(self.engine):
                stmt = stmt.with_for_update(skip_locked=True)
            rows = list(s.exec(stmt))
            for t in rows:
                verdict = self._check(s, t, rs, now)
                t.updated_at = now
                if verdict:
                    t.status, t.reason = "suppressed", verdict
                    s.add(t)
                    continue
                t.status, t.fired_at = "fired", now
                s.add(t)
                for dest in [d for d in t.destinations.split(",") if d]:
                    s.add(
                        DeliveryRow(
                            trigger_id=t.id or 0, destination=dest, idempotency_key=idempotency_key(t, dest),
                            status="pending", next_attempt_at=now, created_at=now, updated_at=now,
                        )
                    )
                    created += 1
                self.fired += 1
            s.commit()
        if self.fault_hook and rows:
            self.fault_hook("scheduler.after_commit")
        if created and self.on_deliveries:
            self.on_deliveries()
        return len(rows)

    def _check(self, s: Session, t: TriggerRow, rs: RuleSet, now: float) -> str | None:
        """Reason to suppress at fire time, or None."""
        pk = t.patient_key
        if not pk:
            return None
        opt_out = s.exec(
            select(Suppression.reason).where(
                Suppression.patient_key == pk, Suppression.revoked_at.is_(None),  # type: ignore[union-attr]
                Suppression.destination.is_(None),  # type: ignore[union-attr]
            ).where((Suppression.purpose.is_(None)) | (Suppression.purpose == t.purpose))  # type: ignore[union-attr]
        ).first()
        if opt_out is not None:
            return f"patient opted out: {opt_out}"
        if t.purpose == "marketing":
            auth = s.exec(
                select(Authorization.id).where(
                    Authorization.patient_key == pk, Authorization.purpose == "marketing",
                    Authorization.revoked_at.is_(None),  # type: ignore[union-attr]
                )
            ).first()
            if auth is None:
                return "marketing requires a recorded authorization (prior express written consent) for this patient"
        why = suppression_at_send(s, pk, rs)
        if why:
            return why
        return self._caps(s, t, rs, now)

    def _caps(self, s: Session, t: TriggerRow, rs: RuleSet, now: float) -> str | None:
        """Caps per patient over rolling 24 h / 7 days, counted over *fired* triggers of all rules.

        A treatment reminder by sms or voice counts against ``settings.treatment_caps``
        with every other treatment sms/voice trigger (the FCC healthcare exemption:
        calls and texts together). Any other trigger counts against ``settings.caps``
        with triggers of the same ``message_kind``, whatever the rule or channel.
        """
        rule = rs.rule(t.rule_id)
        phone_rules = [r.id for r in rs.rules if r.rule.purpose == "treatment-reminder" and r.rule.channel in PHONE_CHANNELS]
        if t.purpose == "treatment-reminder" and rule is not None and rule.rule.channel in PHONE_CHANNELS:
            caps, label_kind = rs.settings.treatment_caps, "treatment calls/texts"
            kind_filter = TriggerRow.rule_id.in_(phone_rules)  # type: ignore[attr-defined]
        else:
            caps, label_kind = rs.settings.caps, f"'{t.message_kind}' messages"
            kind_filter = TriggerRow.message_kind == t.message_kind
        for limit, window, label in ((caps.per_day, DAY, "24 hours"), (caps.per_week, WEEK, "7 days")):
            if limit is None:
                continue
            n = s.exec(
                select(func.count()).select_from(TriggerRow).where(
                    TriggerRow.patient_key == t.patient_key, TriggerRow.status == "fired", kind_filter,
                    TriggerRow.fired_at >= now - window,  # type: ignore[operator]
                )
            ).one()
            if n >= limit:
                return f"cap reached: {n} {label_kind} to this patient in the last {label} (limit {limit})"
        return None
