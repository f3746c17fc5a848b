"""Fire due triggers: caps, authorization and opt-out checks, then one delivery row per
destination, in the same transaction that marks the trigger fired. Works in bounded
batches (never loads all pending triggers); on PostgreSQL rows are claimed with
``FOR UPDATE SKIP LOCKED`` so several workers share the work without firing twice."""
from __future__ import annotations

import hashlib
import logging
from datetime import datetime, time, timedelta, timezone
from typing import Any, Callable, NamedTuple, Sequence, cast
from zoneinfo import ZoneInfo

import orjson

from sqlalchemy.engine import Engine

from .patientctx import deceased_or_hospice
from .. import purposes
from ..rules.load import RuleSet
from ..rules.sendtime import local_at, patient_zone
from ..storage.privacy import chunks, read_privacy
from ..storage.queries import scheduler as q
from ..storage.sql import UnitOfWork, unit
from ..storage.tables import TriggerRow

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


class Fired(NamedTuple):
    """What one firing transaction did: triggers claimed (fired or suppressed), fired, delivery rows made."""

    handled: int
    fired: int
    created: int


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
        # the last batch took every trigger that was due (fewer than ``batch``): the next call looks
        # first, in a read, before taking the write lock (see fire_due)
        self._drained = False

    def next_due(self) -> float | None:
        with unit(self.engine) as u:
            return q.next_due(u)

    def fire_due(self) -> int:
        """Fire up to ``batch`` due triggers; return how many were handled.

        The worker calls this until it returns 0, so a wake-up that fired a few triggers used to end
        with an empty write transaction (on SQLite: the write lock, shared with ingest, BEGIN
        IMMEDIATE and a COMMIT). After a batch that drained what was due, a read of one index
        entry answers instead (issue 16); a trigger that becomes due meanwhile is fired by the
        write transaction the read leads to, or by the next wake-up."""
        if self._drained:
            self._drained = False
            with unit(self.engine) as u:
                if not q.any_due(u, self.clock().timestamp()):
                    return 0
        # one write transaction (SQLite: the write lock first, since it reads then writes)
        with unit(self.engine, write=True) as u:
            res = self.fire_in(u, self.batch)
        self._drained = 0 < res.handled < self.batch
        self.after_commit(res)
        return res.handled

    def fire_in(self, u: UnitOfWork, limit: int) -> Fired:
        """Fire up to ``limit`` due triggers in ``u``, a write transaction the caller commits (then
        calls :meth:`after_commit` with what this returns).

        The processor calls it in the transaction that made triggers due now (issue 16): one
        transaction, one commit and one hand-over of SQLite's write lock per batch of messages
        instead of two, and the trigger needs no wake-up of the scheduler's loop. The claim, the
        checks and the order are :meth:`fire_due`'s."""
        created = 0
        rs = self.ruleset()
        at = self.clock()
        now = at.timestamp()
        rows = q.claim(u, now, limit)
        if not rows:
            return Fired(0, 0, 0)
        verdicts = _Checks(u, rows, rs, at)
        fired: list[dict[str, Any]] = []
        suppressed: list[dict[str, Any]] = []
        deliveries: list[dict[str, Any]] = []
        # ``t`` is a row of the claimed columns (all that ``idempotency_key`` and the checks read);
        # in claim order: a trigger fired earlier in the batch counts toward later ones' caps
        for t in rows:
            verdict = verdicts.check(t)
            if verdict:
                suppressed.append({"t_id": t.id, "t_reason": verdict, "t_now": now})
                continue
            fired.append({"t_id": t.id, "t_now": now})
            verdicts.count_fired(t)
            for dest in [d for d in t.destinations.split(",") if d]:
                deliveries.append({"trigger_id": t.id, "destination": dest,
                                   "idempotency_key": idempotency_key(cast(TriggerRow, t), dest), "now": now})
                created += 1
        q.record(u, fired=fired, suppressed=suppressed, deliveries=deliveries)
        return Fired(len(rows), len(fired), created)

    def after_commit(self, res: Fired) -> None:
        """After the commit of :meth:`fire_in`'s transaction: count, the crash tests' fault point,
        then wake the delivery worker for the rows made."""
        self.fired += res.fired
        if self.fault_hook and res.handled:
            self.fault_hook("scheduler.after_commit")
        if res.created and self.on_deliveries:
            self.on_deliveries()


class _Checks:
    """The fire-time checks for one claimed batch, read with one query per check for all its
    patients, then decided per trigger in Python (in this order, as each trigger used to be
    checked on its own): opt-out, marketing authorization, deceased/hospice, FHIR Consent, caps.
    Opt-outs, authorizations and consents are read by ``storage.privacy.read_privacy`` (the
    delivery gate's query at send time): records under every key of the patient count.

    Caps are per patient over rolling 24 h / 7 days (``per: rolling``) or over the calendar day
    and week in the patient's zone (``per: calendar``: the zone of ``sendtime.patient_zone``,
    else ``settings.site_timezone``), counted over *fired* triggers of all rules.
    A treatment reminder by sms or voice counts against ``settings.treatment_caps`` with every
    other treatment sms/voice trigger (the FCC healthcare exemption: calls and texts together).
    Any other trigger counts against ``settings.caps`` with triggers of the same
    ``message_kind``, whatever the rule or channel. Triggers fired earlier in the same batch
    count (``count_fired``).
    """

    def __init__(self, u: UnitOfWork, rows: Sequence[q.DueTrigger], rs: RuleSet, at: datetime) -> None:
        self.rs = rs
        self.at = at
        self.rules: dict[str, Any] = {}
        for r in rs.rules:
            self.rules.setdefault(r.id, r)  # RuleSet.rule: the first rule of that id
        self.phone_rules = {r.id for r in rs.rules
                            if purposes.fcc_healthcare_exemption(r.rule.purpose) and r.rule.channel in PHONE_CHANNELS}
        keys = sorted({t.patient_key for t in rows if t.patient_key})
        #: opt-outs, authorizations and consents under every key of each patient (merges followed)
        self.privacy = read_privacy(u, keys, marketing=(t.patient_key for t in rows if purposes.needs_authorization(t.purpose)))
        #: ("kind", patient, message_kind) or ("phone", patient) -> [fired in 24 h, fired in 7 days]
        self.counts: dict[tuple[Any, ...], list[int]] = {}
        #: the same keys -> [fired this calendar day, this calendar week] in the patient's zone
        self.cal_counts: dict[tuple[Any, ...], list[int]] = {}
        self.deceased_or_hospice = deceased_or_hospice(u, self.privacy.keys, rs)
        st = rs.settings
        used = [c for c in (st.caps, st.treatment_caps) if c.per_day is not None or c.per_week is not None]
        now = at.timestamp()
        if rs.kind_caps or any(c.per == "rolling" for c in used):
            for part in chunks(keys):
                for pk, rule_id, kind, day, week in q.fired_counts(u, part, day_from=now - DAY, week_from=now - WEEK):
                    self._add(self.counts, pk, rule_id, kind, int(day or 0), int(week))
        for caps in {c.week_starts: c for c in used if c.per == "calendar"}.values():
            bounds = calendar_bounds(u, keys, rs, at, caps.week_starts)
            for part in chunks(keys):
                for pk, rule_id, kind, fired_at in q.fired_times(u, part, since=now - 8 * DAY):
                    day_from, week_from = bounds[pk]
                    if fired_at is not None and fired_at >= week_from:
                        self._add(self.cal_counts, pk, rule_id, kind, int(fired_at >= day_from), 1)

    def _add(self, counts: dict[tuple[Any, ...], list[int]], pk: str, rule_id: str, kind: str | None, day: int,
             week: int) -> None:
        for key in (("kind", pk, kind), ("phone", pk)) if rule_id in self.phone_rules else (("kind", pk, kind),):
            c = counts.setdefault(key, [0, 0])
            c[0] += day
            c[1] += week

    def count_fired(self, t: Any) -> None:
        if t.patient_key:
            self._add(self.counts, t.patient_key, t.rule_id, t.message_kind, 1, 1)
            self._add(self.cal_counts, t.patient_key, t.rule_id, t.message_kind, 1, 1)

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
        if caps.per == "calendar":
            counts = self.cal_counts.get(key, [0, 0])
            spans = ("today", "this week")
        else:
            counts = self.counts.get(key, [0, 0])
            spans = ("in the last 24 hours", "in the last 7 days")
        for limit, n, span in ((caps.per_day, counts[0], spans[0]), (caps.per_week, counts[1], spans[1])):
            if limit is not None and n >= limit:
                return f"cap reached: {n} {label_kind} to this patient {span} (limit {limit})"
        journey_cap = self.rs.kind_caps.get(t.message_kind or "")
        if journey_cap is not None:  # a journey's own cap: all its steps together (rules/journeys.py)
            counts = self.counts.get(("kind", t.patient_key, t.message_kind), [0, 0])
            for limit, n, label in ((journey_cap.per_day, counts[0], "24 hours"), (journey_cap.per_week, counts[1], "7 days")):
                if limit is not None and n >= limit:
                    return (f"journey cap reached: {n} '{t.message_kind}' messages to this patient in the last {label} "
                            f"(limit {limit})")
        return None


def calendar_bounds(u: UnitOfWork, keys: Sequence[str], rs: RuleSet, at: datetime,
                    week_starts: str = "monday") -> dict[str, tuple[float, float]]:
    """For each patient key: the start of today and of this week (local midnight) in the
    patient's zone (``sendtime.patient_zone`` of the stored Patient, else the site's)."""
    zones: dict[str, str] = {}
    if keys:
        for part in chunks(list(keys)):
            for key, resource in q.patient_resources(u, part):
                found = patient_zone(orjson.loads(resource), from_address=rs.settings.zone_from_address)
                if found:
                    zones[key] = found[0]
    first = 0 if week_starts == "monday" else 6
    out: dict[str, tuple[float, float]] = {}
    for key in keys:
        tz = ZoneInfo(zones.get(key, rs.settings.site_timezone))
        today = at.astimezone(tz).date()
        week = today - timedelta(days=(today.weekday() - first) % 7)
        out[key] = (local_at(today, time(0, 0), tz).timestamp(), local_at(week, time(0, 0), tz).timestamp())
    return out
