"""Fire due triggers: caps, authorization and opt-out checks, then one delivery row per
destination, in the same transaction that marks the trigger fired. Works in bounded
batches (never loads all pending triggers); on PostgreSQL rows are claimed with
``FOR UPDATE SKIP LOCKED`` so several workers share the work without firing twice."""
from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Callable, Sequence, cast

from sqlalchemy import bindparam, case, func, insert, update
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from .patientctx import deceased_or_hospice
from .. import purposes
from ..rules.load import RuleSet
from ..storage.db import begin_write, is_sqlite, write_lock
from ..storage.privacy import chunks, read_privacy
from ..storage.tables import DeliveryRow, TriggerRow

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
        at = self.clock()
        now = at.timestamp()
        created = 0
        with Session(self.engine, expire_on_commit=False) as s:
            begin_write(s)  # SQLite: take the write lock first (read-then-write would fail under a concurrent commit)
            conn = s.connection()
            rows = conn.execute(_claim_stmt(self.batch, not is_sqlite(self.engine)), {"now": now}).all()
            verdicts = _Checks(s, rows, rs, at)
            fired: list[dict[str, Any]] = []
            suppressed: list[dict[str, Any]] = []
            deliveries: list[dict[str, Any]] = []
            # ``t`` is a Core row of the claimed columns (all that ``idempotency_key`` and the checks read);
            # in claim order: a trigger fired earlier in the batch counts toward later ones' caps
            for t in rows:
                verdict = verdicts.check(t)
                if verdict:
                    suppressed.append({"t_id": t.id, "t_reason": verdict, "t_now": now})
                    continue
                fired.append({"t_id": t.id, "t_now": now})
                verdicts.count_fired(t)
                for dest in [d for d in t.destinations.split(",") if d]:
                    deliveries.append({
                        "trigger_id": t.id or 0, "destination": dest,
                        "idempotency_key": idempotency_key(cast(TriggerRow, t), dest), "status": "pending", "attempts": 0,
                        "next_attempt_at": now, "created_at": now, "updated_at": now,
                    })
                    created += 1
                self.fired += 1
            if fired:
                conn.execute(_MARK_FIRED, fired)
            if suppressed:
                conn.execute(_MARK_SUPPRESSED, suppressed)
            if deliveries:
                conn.execute(_INSERT_DELIVERY, deliveries)
            s.commit()
        if self.fault_hook and rows:
            self.fault_hook("scheduler.after_commit")
        if created and self.on_deliveries:
            self.on_deliveries()
        return len(rows)


# -- statements, built once (SQLAlchemy caches their compiled form) --

_T = TriggerRow.__table__  # type: ignore[attr-defined]
_D = DeliveryRow.__table__  # type: ignore[attr-defined]
_CLAIM = (
    sa_select(_T.c.id, _T.c.rule_id, _T.c.name, _T.c.purpose, _T.c.destinations, _T.c.patient_key, _T.c.resource_key,
              _T.c.resource_version, _T.c.dedup_key, _T.c.message_kind, _T.c.flag)
    .where(_T.c.status == "pending", _T.c.due_at <= bindparam("now"))
    .order_by(_T.c.due_at)
)
#: fired triggers per patient, rule and message kind over the last 7 days, and how many of them in the last 24 hours
_FIRED_COUNTS = (
    sa_select(
        _T.c.patient_key, _T.c.rule_id, _T.c.message_kind,
        func.sum(case((_T.c.fired_at >= bindparam("day_from"), 1), else_=0)), func.count(),
    )
    .where(_T.c.patient_key.in_(bindparam("pks", expanding=True)), _T.c.status == "fired",
           _T.c.fired_at >= bindparam("week_from"))
    .group_by(_T.c.patient_key, _T.c.rule_id, _T.c.message_kind)
)
_MARK_FIRED = update(_T).where(_T.c.id == bindparam("t_id")).values(
    status="fired", fired_at=bindparam("t_now"), updated_at=bindparam("t_now"))
_MARK_SUPPRESSED = update(_T).where(_T.c.id == bindparam("t_id")).values(
    status="suppressed", reason=bindparam("t_reason"), updated_at=bindparam("t_now"))
_INSERT_DELIVERY = insert(_D)


@lru_cache(maxsize=8)
def _claim_stmt(limit: int, skip_locked: bool) -> Any:
    stmt = _CLAIM.limit(limit)
    return stmt.with_for_update(skip_locked=True) if skip_locked else stmt


class _Checks:
    """The fire-time checks for one claimed batch, read with one query per check for all its
    patients, then decided per trigger in Python (in this order, as each trigger used to be
    checked on its own): opt-out, marketing authorization, deceased/hospice, FHIR Consent, caps.
    Opt-outs, authorizations and consents are read by ``storage.privacy.read_privacy`` (the
    delivery gate's query at send time): records under every key of the patient count.

    Caps are per patient over rolling 24 h / 7 days, counted over *fired* triggers of all rules.
    A treatment reminder by sms or voice counts against ``settings.treatment_caps`` with every
    other treatment sms/voice trigger (the FCC healthcare exemption: calls and texts together).
    Any other trigger counts against ``settings.caps`` with triggers of the same
    ``message_kind``, whatever the rule or channel. Triggers fired earlier in the same batch
    count (``count_fired``).
    """

    def __init__(self, s: Session, rows: Sequence[Any], rs: RuleSet, at: datetime) -> None:
        self.rs = rs
        self.at = at
        self.rules: dict[str, Any] = {}
        for r in rs.rules:
            self.rules.setdefault(r.id, r)  # RuleSet.rule: the first rule of that id
        self.phone_rules = {r.id for r in rs.rules
                            if purposes.fcc_healthcare_exemption(r.rule.purpose) and r.rule.channel in PHONE_CHANNELS}
        keys = sorted({t.patient_key for t in rows if t.patient_key})
        conn = s.connection()
        #: opt-outs, authorizations and consents under every key of each patient (merges followed)
        self.privacy = read_privacy(conn, keys, marketing=(t.patient_key for t in rows if purposes.needs_authorization(t.purpose)))
        #: ("kind", patient, message_kind) or ("phone", patient) -> [fired in 24 h, fired in 7 days]
        self.counts: dict[tuple[Any, ...], list[int]] = {}
        self.deceased_or_hospice = deceased_or_hospice(conn, self.privacy.keys, rs)
        st = rs.settings
        if rs.kind_caps or any(c is not None for c in (st.caps.per_day, st.caps.per_week, st.treatment_caps.per_day,
                                                      st.treatment_caps.per_week)):
            now = at.timestamp()
            params = {"day_from": now - DAY, "week_from": now - WEEK}
            for part in chunks(keys):
                for pk, rule_id, kind, day, week in conn.execute(_FIRED_COUNTS, {**params, "pks": part}):
                    self._add(pk, rule_id, kind, int(day or 0), int(week))

    def _add(self, pk: str, rule_id: str, kind: str | None, day: int, week: int) -> None:
        for key in (("kind", pk, kind), ("phone", pk)) if rule_id in self.phone_rules else (("kind", pk, kind),):
            c = self.counts.setdefault(key, [0, 0])
            c[0] += day
            c[1] += week

    def count_fired(self, t: Any) -> None:
        if t.patient_key:
            self._add(t.patient_key, t.rule_id, t.message_kind, 1, 1)

    def check(self, t: Any) -> str | None:
        """Reason to suppress at fire time, or None."""
        pk = t.patient_key
        if not pk:
            return None
        opt_out = self.privacy.opt_out(pk, t.purpose)  # patient-wide rows; per-destination ones at send time
        if opt_out is not None:
            return f"patient opted out: {opt_out.reason}"
        if purposes.needs_authorization(t.purpose) and not self.privacy.has_marketing_authorization(pk):
            return "marketing requires a recorded authorization (prior express written consent) for this patient"
        why = self.deceased_or_hospice.get(pk)
        if why:
            return why
        if t.flag and purposes.drop_on_missing_data(t.purpose):
            return f"not sent on data that could not be re-checked ({t.purpose} may be dropped on missing data): {t.flag}"

        return self.consent_denial(t) or self.caps(t)

    def consent_denial(self, t: Any) -> str | None:
        """The first destination's reason when the patient's Consents deny *every* destination of
        the trigger; a denial of only some is recorded on those deliveries at send time."""
        if t.patient_key not in self.privacy.consent_json:  # most patients have none
            return None
        first: str | None = None
        for dest in [d for d in t.destinations.split(",") if d]:
            reason = self.privacy.consent_denial(t.patient_key, t.purpose, dest, self.at)
            if reason is None:
                return None
            first = first or reason
        return first

    def caps(self, t: Any) -> str | None:
        rule = self.rules.get(t.rule_id)
        key: tuple[str, ...]
        if purposes.fcc_healthcare_exemption(t.purpose) and rule is not None and rule.rule.channel in PHONE_CHANNELS:
            caps, label_kind, key = self.rs.settings.treatment_caps, "treatment calls/texts", ("phone", t.patient_key)
        else:
            caps, label_kind, key = self.rs.settings.caps, f"'{t.message_kind}' messages", ("kind", t.patient_key, t.message_kind)
        counts = self.counts.get(key, (0, 0))
        for limit, n, label in ((caps.per_day, counts[0], "24 hours"), (caps.per_week, counts[1], "7 days")):
            if limit is not None and n >= limit:
                return f"cap reached: {n} {label_kind} to this patient in the last {label} (limit {limit})"
        journey_cap = self.rs.kind_caps.get(t.message_kind or "")
        if journey_cap is not None:  # a journey's own cap: all its steps together (rules/journeys.py)
            counts = self.counts.get(("kind", t.patient_key, t.message_kind), (0, 0))
            for limit, n, label in ((journey_cap.per_day, counts[0], "24 hours"), (journey_cap.per_week, counts[1], "7 days")):
                if limit is not None and n >= limit:
                    return (f"journey cap reached: {n} '{t.message_kind}' messages to this patient in the last {label} "
                            f"(limit {limit})")
        return None
