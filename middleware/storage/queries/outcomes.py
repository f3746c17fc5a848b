"""Queries of outcome tracking and holdouts (issue 14): journey entries' goals, the later
events that settle them, persisted holdout arms, and report tallies."""
from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import Integer, cast, func, literal_column, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import ClauseElement
from sqlmodel import SQLModel

from ..sql import any_of, param, query
from ..statuses import OutcomeStatus

T = SQLModel.metadata.tables
outcome = T["outcome"]
holdout = T["holdout_assignment"]
event = T["event"]


def _insert(dialect: str, table: object) -> object:
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)  # type: ignore[arg-type]


def _open_entry(dialect: str) -> ClauseElement:
    ins = _insert(dialect, outcome).values(  # type: ignore[attr-defined]
        entry_key=param("entry_key"), goal_id=param("goal_id"), rule_id=param("rule_id"), journey_id=param("journey_id"),
        ruleset_version=param("ruleset_version"), patient_key=param("patient_key"), patient_id=param("patient_id"),
        origin_event_id=param("origin_event_id"), origin_resource_key=param("origin_resource_key"),
        trigger_id=param("trigger_id"), experiment=param("experiment"), period=param("period"), arm=param("arm"),
        status=OutcomeStatus.PENDING, anchor_at=param("anchor_at"), window_opens=param("window_opens"),
        window_closes=param("window_closes"), destination=param("destination"), anchor_month=param("anchor_month"),
        anchor_week=param("anchor_week"), created_at=param("now"), updated_at=param("now"))
    return ins.on_conflict_do_nothing(index_elements=["entry_key"])  # type: ignore[no-any-return]


OPEN_ENTRY = query("outcome.open_entry", _open_entry)


class OpenEntry(NamedTuple):
    id: int
    goal_id: str
    rule_id: str
    patient_key: str | None
    origin_event_id: int | None
    origin_resource_key: str | None
    status: str
    event_id: int | None
    anchor_at: float | None
    window_opens: float | None
    window_closes: float | None


_ENTRY_COLS = (outcome.c.id, outcome.c.goal_id, outcome.c.rule_id, outcome.c.patient_key, outcome.c.origin_event_id,
               outcome.c.origin_resource_key, outcome.c.status, outcome.c.event_id, outcome.c.anchor_at,
               outcome.c.window_opens, outcome.c.window_closes)

PENDING_FOR_PATIENT = query(
    "outcome.pending_for_patient",
    select(*_ENTRY_COLS).where(outcome.c.patient_key == param("patient_key"), outcome.c.status == OutcomeStatus.PENDING)
    .order_by(outcome.c.id),
    OpenEntry)

DUE_TO_CLOSE = query(
    "outcome.due_to_close",
    select(*_ENTRY_COLS).where(outcome.c.status == OutcomeStatus.PENDING, outcome.c.window_closes <= param("now"))
    .order_by(outcome.c.window_closes, outcome.c.id).limit(param("limit")),
    OpenEntry)

FOR_PATIENT = query(
    "outcome.for_patient",
    select(*_ENTRY_COLS).where(outcome.c.patient_key == param("patient_key")).order_by(outcome.c.id),
    OpenEntry)

SETTLE = query(
    "outcome.settle",
    update(outcome).where(outcome.c.id == param("id")).values(
        status=param("status"), event_id=param("event_id"), achieved_at=param("achieved_at"),
        elapsed_s=param("elapsed_s"), updated_at=param("now")))

MARK_DELIVERED = query(
    "outcome.mark_delivered",
    update(outcome).where(outcome.c.trigger_id == param("trigger_id"), outcome.c.delivered.is_(False))
    .values(delivered=True, updated_at=param("now")))

FOLLOW_MERGE = query(
    "outcome.follow_merge",
    update(outcome).where(outcome.c.patient_key == param("retired")).values(patient_key=param("surviving")))


class LaterEventRow(NamedTuple):
    id: int
    type: str
    resource_type: str
    resource_key: str
    resource: str
    occurred_at: float


PATIENT_EVENTS = query(
    "outcome.patient_events",
    select(event.c.id, event.c.type, event.c.resource_type, event.c.resource_key, event.c.resource, event.c.occurred_at)
    .where(event.c.patient_key == param("patient_key"), any_of(event.c.type, "types"))
    .order_by(event.c.id),
    LaterEventRow)

ORIGIN_RESOURCE = query("outcome.origin_resource", select(event.c.resource, event.c.occurred_at)
                        .where(event.c.id == param("id")))

ARM = query(
    "holdout.arm",
    select(holdout.c.arm).where(holdout.c.experiment == param("experiment"), holdout.c.period == param("period"),
                                holdout.c.patient_id == param("patient_id")))


def _assign(dialect: str) -> ClauseElement:
    ins = _insert(dialect, holdout).values(  # type: ignore[attr-defined]
        experiment=param("experiment"), period=param("period"), patient_id=param("patient_id"), arm=param("arm"),
        share=param("share"), assigned_at=param("now"))
    return ins.on_conflict_do_nothing(index_elements=["experiment", "period", "patient_id"])  # type: ignore[no-any-return]


ASSIGN = query("holdout.assign", _assign)


class Tally(NamedTuple):
    experiment: str | None
    period: str | None
    arm: str | None
    status: str
    delivered: bool
    ruleset_version: str | None
    destination: str | None
    anchor_month: str | None
    anchor_week: str | None
    stopped: str | None  # why the trigger was not delivered (storage/outcome_stops.py), NULL when it was not stopped
    entries: int
    triggered: int  # entries with a trigger recorded (held-out entries have none)


_BREAKDOWN = (outcome.c.ruleset_version, outcome.c.destination, outcome.c.anchor_month, outcome.c.anchor_week,
              outcome.c.stopped)

TALLY = query(
    "outcome.tally",
    select(outcome.c.experiment, outcome.c.period, outcome.c.arm, outcome.c.status, outcome.c.delivered, *_BREAKDOWN,
           func.count().label("entries"), func.count(outcome.c.trigger_id).label("triggered"))
    .where(outcome.c.goal_id == param("goal_id"))  # ix_outcome_report: index-only, in group order
    .group_by(outcome.c.experiment, outcome.c.period, outcome.c.arm, outcome.c.status, outcome.c.delivered, *_BREAKDOWN),
    Tally)


_ACHIEVED = outcome.c.status == OutcomeStatus.ACHIEVED
#: the n-th shortest time to goal of one arm (``n`` = half the achieved count: the median), read
#: from ix_outcome_elapsed in order without fetching the other rows
NTH_ELAPSED = query(
    "outcome.nth_elapsed",
    select(outcome.c.elapsed_s)
    .where(outcome.c.goal_id == param("goal_id"), outcome.c.experiment == param("experiment"),
           outcome.c.period == param("period"), outcome.c.arm == param("arm"), _ACHIEVED)
    .order_by(outcome.c.elapsed_s).limit(1).offset(param("n")))
NTH_ELAPSED_NO_HOLDOUT = query(
    "outcome.nth_elapsed_no_holdout",
    select(outcome.c.elapsed_s)
    .where(outcome.c.goal_id == param("goal_id"), outcome.c.experiment.is_(None), outcome.c.period.is_(None),
           outcome.c.arm.is_(None), _ACHIEVED)
    .order_by(outcome.c.elapsed_s).limit(1).offset(param("n")))

class DayCount(NamedTuple):
    arm: str | None
    day: int
    entries: int


#: achieved entries by whole days from the anchor, per arm (ix_outcome_elapsed: index-only)
ACHIEVED_BY_DAY = query(
    "outcome.achieved_by_day",
    select(outcome.c.arm, cast(outcome.c.elapsed_s / 86400, Integer).label("day"), func.count().label("entries"))
    .where(outcome.c.goal_id == param("goal_id"), outcome.c.status == OutcomeStatus.ACHIEVED,
           outcome.c.elapsed_s.is_not(None))
    .group_by(outcome.c.arm, literal_column("day"))  # the output column: one expression, bound once
    .order_by(outcome.c.arm, literal_column("day")),
    DayCount)

GOALS = query("outcome.goals", select(outcome.c.goal_id, func.count().label("entries")).group_by(outcome.c.goal_id)
              .order_by(outcome.c.goal_id))


class ExportRow(NamedTuple):
    rule_id: str
    journey_id: str | None
    ruleset_version: str | None
    experiment: str | None
    period: str | None
    arm: str | None
    status: str
    elapsed_s: float | None
    window_opens: float | None
    achieved_at: float | None


EXPORT = query(
    "outcome.export",
    select(outcome.c.rule_id, outcome.c.journey_id, outcome.c.ruleset_version, outcome.c.experiment, outcome.c.period,
           outcome.c.arm, outcome.c.status, outcome.c.elapsed_s, outcome.c.window_opens, outcome.c.achieved_at)
    .where(outcome.c.goal_id == param("goal_id")).order_by(outcome.c.id),
    ExportRow)
