"""The ``outcomes`` sandbox scenario: a few hundred synthetic no-shows through HAPI, a 50%
holdout, a known ground truth, and careloop's outcome report checked against it exactly.

With a fixed seed the scenario:

1. writes ``n`` synthetic patients and a booked visit each (started 20 minutes ago) to HAPI
   in one transaction bundle, and waits until careloop holds an ``appointment.booked``
   event for every visit (HAPI's rest-hook notifications);
2. marks every visit ``noshow`` (a second bundle) and waits until careloop holds the ``n``
   no-show events and ``n`` journey entries for the run's goal (report ``entries``), and a
   trigger of :data:`RULE_ID` for every treated entry;
3. learns each patient's arm from careloop itself (a treated patient has a trigger of the
   rule, a held-out one none), then rebooks a seeded subset, with a built-in effect: a
   treated patient rebooks with probability :data:`P_REBOOK` ``["treated"]``, a held-out one
   with ``["held_out"]`` (one uniform draw per patient, in patient order, from the seed);
4. waits until careloop holds the ``appointment.booked`` event of every rebooking, reads
   ``GET /api/reports/outcomes/<goal>`` and compares entries and achieved per arm with the
   truth. The goal counts a booking *recorded* within 336 hours after the no-show was
   recorded, so the rebookings written now count and the missed visit's own booking (written
   before the no-show) does not; the other entries stay ``pending`` until their window
   closes in 14 days, so ``missed`` must be 0 and ``pending`` must be entries - achieved;
5. with ``close_windows`` (a demo careloop started here: :meth:`.LocalCareloop.close_windows`),
   settles the windows as of 15 days later and compares again: achieved unchanged, every
   other entry ``missed``, none ``pending``.

The arms are read from careloop (its triggers); the independent part of the truth is which
patients rebooked, and the report's per-arm entries must agree with the triggers.

The rule (:func:`extra_rules`) exists only in the demo careloop the scenario starts (added to
its copy of the mappings, :func:`.demo_mappings.prepare`); it is care coordination, so its
holdout carries a study declaration. Rule, goal and experiment are per run (the run's tag):
only that run's patients enter, so a reused database or late notifications of earlier runs
(HAPI retries what it could not deliver) never mix into the report that is checked. Every wait is a deadline-bounded poll.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import httpx

from . import journeys
from .local import CareloopApi
from .seed import _locations, as_transaction_bundle, post_bundle

Json = dict[str, Any]
RULE_ID = "sandbox-noshow-winback"
RULE_FILE = "sandbox_outcomes.yaml"
RULE_YAML = """\
# Sandbox only (careloop sandbox scenario outcomes, run {tag}): a goal and a 50% holdout under a study.
# Only this run's patients (ids sbx-out-{tag}-...) enter, so other traffic never mixes into its report.
rules:
  - id: {rule}
    description: Sandbox outcomes scenario - win back a patient who missed a visit; half are held out.
    on: [appointment.noshow]
    where: id.startsWith('sbx-out-{tag}-')
    purpose: care-coordination
    on_no_longer_matching: keep
    emit: {{trigger: sandbox_noshow_winback, destinations: [webhook]}}
    goal:
      id: {goal}
      aligned_with: a new booking for the patient within 14 days (336 h) of the no-show (sandbox)
      on: [appointment.booked]
      counted_at: recorded     # when the booking was made
      anchored_at: recorded    # from when the no-show was recorded: the missed visit's own booking is before it
      window: {{from: 0, to: 336, unit: hours}}
    holdout:
      share: 0.5
      experiment: {experiment}
      study: {{approval: SANDBOX-0001, approver: Sandbox (synthetic data), expires: "2099-12-31"}}
"""


def goal_id(tag: str) -> str:
    """The run's goal (one per run: a report holds this run's patients only)."""
    return f"sandbox-noshow-rebooked-14d-{tag}"


def experiment(tag: str) -> str:
    return f"sandbox-noshow-winback-{tag}"


def extra_rules(tag: str) -> dict[str, str]:
    """The sandbox rule file for run ``tag`` (for :meth:`.LocalCareloop.start`'s ``extra_rules``)."""
    return {RULE_FILE: RULE_YAML.format(tag=tag, rule=RULE_ID, goal=goal_id(tag), experiment=experiment(tag))}


#: probability that a patient rebooks, by arm (the built-in effect of the outreach)
P_REBOOK = {"treated": 0.6, "held_out": 0.3}
ARMS = ("treated", "held_out")
Progress = Callable[[str], None]


class ScenarioError(RuntimeError):
    """A phase did not complete within its deadline (the message says what is missing)."""


@dataclass
class Cohort:
    """The synthetic patients of one run: ids ``sbx-out-<tag>-<i>``."""

    tag: str
    n: int
    seed: int
    now: datetime
    patients: list[Json] = field(default_factory=list)
    visits: list[Json] = field(default_factory=list)

    def pid(self, i: int) -> str:
        return f"sbx-out-{self.tag}-{i:04d}"


def cohort(n: int, seed: int, tag: str, now: datetime) -> Cohort:
    """``n`` patients with a visit that started 20 minutes before ``now``; pure."""
    c = Cohort(tag, n, seed, now)
    start = now - timedelta(minutes=20)
    for i in range(n):
        pat = journeys.patient(f"{tag}-{i:04d}")
        pat["id"] = c.pid(i)
        c.patients.append(pat)
        c.visits.append(journeys.appointment(f"{c.pid(i)}-visit", pat, start, "booked"))
    return c


def rebookings(c: Cohort, arms: dict[int, str]) -> list[int]:
    """Which patients rebook: one seeded uniform draw per patient, compared with the arm's
    probability (:data:`P_REBOOK`); pure, so the truth is known before anything is written."""
    rng = random.Random(c.seed)
    draws = [rng.random() for _ in range(c.n)]
    return [i for i in range(c.n) if draws[i] < P_REBOOK[arms[i]]]


def rebooking(c: Cohort, i: int) -> Json:
    return journeys.appointment(f"{c.pid(i)}-rebook", c.patients[i], c.now + timedelta(days=7), "booked")


@dataclass
class Row:
    arm: str
    what: str
    truth: int
    report: int | None
    windows: str = "open"

    @property
    def ok(self) -> bool:
        return self.truth == self.report


@dataclass
class OutcomesRun:
    cohort: Cohort
    arms: dict[int, str] = field(default_factory=dict)
    rebooked: list[int] = field(default_factory=list)
    report: Json | None = None
    settled: Json | None = None  # the report after the windows were closed (step 5)
    rows: list[Row] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.ok for r in self.rows)

    def truth(self, windows_closed: bool = False) -> dict[str, dict[str, int]]:
        """Per arm: entries, achieved, missed, pending, while the windows are open or once closed."""
        out: dict[str, dict[str, int]] = {}
        for arm in ARMS:
            members = [i for i, a in self.arms.items() if a == arm]
            got = len([i for i in self.rebooked if self.arms[i] == arm])
            left = len(members) - got
            out[arm] = {"entries": len(members), "achieved": got, "missed": left if windows_closed else 0,
                        "pending": 0 if windows_closed else left}
        return out

    def compare(self, report: Json | None, windows_closed: bool = False) -> list[Row]:
        got = _arm_counts(report)
        rows = []
        for arm, truth in self.truth(windows_closed).items():
            for what, value in truth.items():
                reported = got.get(arm, {}).get(what)
                rows.append(Row(arm, what, value, None if reported is None else int(reported),
                                "closed" if windows_closed else "open"))
        return rows


def _ref(e: Json) -> str | None:
    res = e.get("resource") or {}
    return f"{res.get('resourceType')}/{res.get('id')}" if isinstance(res, dict) and res.get("id") else None


def _wait(what: str, check: Callable[[], str | None], deadline_s: float, progress: Progress | None) -> None:
    """Poll ``check`` (``None`` when done, else what is still missing) until done or the deadline."""
    end = time.monotonic() + deadline_s
    last = None
    while True:
        left = check()
        if left is None:
            return
        if progress is not None and left != last:
            progress(f"{what}: {left}")
            last = left
        if time.monotonic() > end:
            raise ScenarioError(f"{what}: still missing after {deadline_s:.0f}s: {left}")
        time.sleep(0.25)


def _events(api: CareloopApi, since: int, etype: str, refs: set[str]) -> dict[str, Json]:
    return {r: e for e in api.all_pages("events", since, type=etype) if (r := _ref(e)) in refs}


def _arm_counts(report: Json | None) -> dict[str, Json]:
    items = (report or {}).get("items") or []
    if not items:
        return {}
    return {arm: items[0].get(arm) or {} for arm in ARMS}


def run(fhir_base: str, api: CareloopApi, tag: str, *, n: int = 200, seed: int = 14,
        now: datetime | None = None, phase_deadline_s: float | None = None,
        progress: Progress | None = None, close_windows: Callable[[datetime], Any] | None = None) -> OutcomesRun:
    """Run the scenario against HAPI at ``fhir_base`` and the careloop behind ``api`` (see the
    module doc). Raises :class:`ScenarioError` when careloop does not catch up in time."""
    goal = goal_id(tag)
    c = cohort(n, seed, tag, (now or datetime.now(timezone.utc)).replace(microsecond=0))
    out = OutcomesRun(c)
    deadline = phase_deadline_s if phase_deadline_s is not None else 60.0 + 0.5 * n
    since = api.newest_ids()["events"]
    visit_refs = {f"Appointment/{v['id']}" for v in c.visits}
    clinic = next(loc for loc in _locations() if loc["id"] == "sbx-loc-north")
    with httpx.Client(timeout=120) as client:
        # 1. patients and their booked visits
        t0 = time.monotonic()
        post_bundle(fhir_base, as_transaction_bundle([clinic, *c.patients, *c.visits]), client=client)

        def booked() -> str | None:
            k = len(_events(api, since, "appointment.booked", visit_refs))
            return None if k == n else f"{k}/{n} appointment.booked events"
        _wait("visits booked", booked, deadline, progress)
        out.seconds["booked"] = time.monotonic() - t0

        # 2. every visit missed: one journey entry per patient, a trigger for the treated ones
        t0 = time.monotonic()
        post_bundle(fhir_base, as_transaction_bundle([{**v, "status": "noshow"} for v in c.visits]), client=client)
        noshows: dict[str, Json] = {}
        treated_keys: set[str] = set()

        def missed() -> str | None:
            noshows.update(_events(api, since, "appointment.noshow", visit_refs))
            if len(noshows) < n:
                return f"{len(noshows)}/{n} appointment.noshow events"
            arms = _arm_counts(api.outcomes(goal))
            entries = sum(int(arms.get(a, {}).get("entries") or 0) for a in ARMS)
            keys = {e.get("patient_key") for e in noshows.values()}
            treated_keys.clear()
            treated_keys.update(t["patient_key"] for t in api.all_pages("triggers", 0, rule_id=RULE_ID)
                                if t.get("patient_key") in keys)
            if not arms or entries != n:
                return f"{entries}/{n} journey entries for {goal} (is this run's sandbox rule {RULE_ID} loaded?)"
            want = int(arms["treated"].get("entries") or 0)
            if len(treated_keys) < want:
                return f"{len(treated_keys)}/{want} triggers of {RULE_ID}"
            return None
        _wait("visits missed", missed, deadline, progress)
        out.seconds["noshow"] = time.monotonic() - t0
        for i, v in enumerate(c.visits):
            key = noshows[f"Appointment/{v['id']}"].get("patient_key")
            out.arms[i] = "treated" if key in treated_keys else "held_out"

        # 3. a seeded subset rebooks (more often when treated)
        t0 = time.monotonic()
        out.rebooked = rebookings(c, out.arms)
        rebook = [rebooking(c, i) for i in out.rebooked]
        rebook_refs = {f"Appointment/{a['id']}" for a in rebook}
        if rebook:
            post_bundle(fhir_base, as_transaction_bundle(rebook), client=client)

        def rebooked() -> str | None:
            k = len(_events(api, since, "appointment.booked", rebook_refs))
            return None if k == len(rebook) else f"{k}/{len(rebook)} appointment.booked events (rebookings)"
        _wait("rebookings", rebooked, deadline, progress)
        out.seconds["rebooked"] = time.monotonic() - t0

    # 4. the report against the truth
    out.report = api.outcomes(goal)
    out.rows = out.compare(out.report)
    # 5. settle the windows as of 15 days later (only where the caller can: a careloop started here)
    if close_windows is not None:
        close_windows(c.now + timedelta(days=15))
        out.settled = api.outcomes(goal)
        out.rows += out.compare(out.settled, windows_closed=True)
    return out
