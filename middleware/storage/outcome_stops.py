"""Why a journey entry's trigger was not delivered, kept on the entry by the database itself.

The report's funnel counts suppressed entries by reason (consent, opt-out, caps, quiet hours,
authorization, ...). Reading every undelivered entry's trigger and deliveries at report time
costs one random lookup per entry (seconds at a million entries), so the reason's category is
written to ``outcome.stopped`` when it happens, by database triggers on both dialects:

- a ``trigger`` whose status changes to suppressed, cancelled or skipped (the scheduler's caps,
  opt-outs and authorizations at fire time, cancellations, quiet hours) stamps its entries with
  the category of its reason; back to pending or fired clears it;
- a ``delivery`` suppressed at send time (consent, opt-out, BAA, purpose, authorization) stamps
  its trigger's undelivered entries that have no category yet;
- an entry opened for a trigger already stopped at evaluation (deceased, hospice, time passed,
  duplicate) takes that trigger's category when it is inserted.

No application write path changes and no statement is added (the work runs inside the
statements that change the status). The categories come from careloop's own reasons:
:data:`REASONS`, first match wins. Revision 0010 installs the triggers and backfills.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import DDL, event
from sqlmodel import SQLModel

#: reason category -> words of careloop's reasons that name it (lower case; first match wins:
#: a marketing authorization's reason mentions "consent" too, so it comes first)
REASONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("authorization", ("requires a recorded authorization",)),
    ("opt-out", ("opt-out", "opted out")),
    ("consent", ("consent",)),
    ("caps", ("cap reached",)),
    ("quiet hours", ("quiet hours",)),
    ("time passed", ("has already passed", "not before")),
    ("deceased", ("deceased",)),
    ("hospice", ("hospice",)),
    ("duplicate", ("duplicate of trigger",)),
    ("superseded", ("superseded by",)),
    ("destination policy", ("business associate agreement", "destination policy")),
    ("unverified data", ("could not be re-checked",)),
    ("journey exit", ("exit '",)),
    ("rescheduled", ("moved",)),
    ("cancelled", ("cancelled",)),
)
STOPPED_STATUSES = ("suppressed", "cancelled", "skipped")
_STOPPED_SQL = "('suppressed', 'cancelled', 'skipped')"


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def category_sql(reason: str, status: str | None = None) -> str:
    """The SQL CASE giving the category of ``reason`` (an SQL expression); ``status``: a
    cancelled trigger whose reason names nothing known is "cancelled", anything else "other"."""
    whens = " ".join(f"WHEN lower({reason}) LIKE {_lit('%' + w + '%')} THEN {_lit(name)}"
                     for name, words in REASONS for w in words)
    fallback = f"CASE WHEN {status} = 'cancelled' THEN 'cancelled' ELSE 'other' END" if status else "'other'"
    return f"CASE {whens} ELSE {fallback} END"


def category(reason: str | None, status: str | None = None) -> str:
    """:func:`category_sql` in Python (tests, tools): the same table, the same order."""
    low = (reason or "").lower()
    for name, words in REASONS:
        if any(w in low for w in words):
            return name
    return "cancelled" if status == "cancelled" else "other"


NAMES = {"sqlite": ("outcome_stop_on_trigger", "outcome_stop_on_delivery", "outcome_stop_on_delivery_insert",
                    "outcome_stop_on_open"),
         "postgresql": ("outcome_stop_on_trigger", "outcome_stop_on_delivery", "outcome_stop_on_open")}
_ON = {"outcome_stop_on_trigger": "trigger", "outcome_stop_on_delivery": "delivery",
       "outcome_stop_on_delivery_insert": "delivery", "outcome_stop_on_open": "outcome"}
_PG_FN = {"outcome_stop_on_trigger": "careloop_outcome_stop_trigger", "outcome_stop_on_delivery": "careloop_outcome_stop_delivery",
          "outcome_stop_on_open": "careloop_outcome_stop_open"}


def _bodies(new: str) -> dict[str, str]:
    t_cat = category_sql(f"{new}.reason", f"{new}.status")
    d_cat = category_sql(f"{new}.last_error")
    open_cat = category_sql("t.reason", "t.status")
    return {
        "outcome_stop_on_trigger": (f"UPDATE outcome SET stopped = CASE WHEN {new}.status IN {_STOPPED_SQL} THEN {t_cat} "
                                    f"ELSE NULL END WHERE trigger_id = {new}.id;"),
        "outcome_stop_on_delivery": (f"UPDATE outcome SET stopped = {d_cat} WHERE trigger_id = {new}.trigger_id "
                                     "AND stopped IS NULL AND delivered = false;"),
        # SQLite: an AFTER INSERT update, only when the trigger was stopped (most entries: one PK probe)
        "outcome_stop_on_open": (f"UPDATE outcome SET stopped = (SELECT {open_cat} FROM \"trigger\" t WHERE t.id = {new}.trigger_id) "
                                 f"WHERE id = {new}.id AND EXISTS (SELECT 1 FROM \"trigger\" t WHERE t.id = {new}.trigger_id "
                                 f"AND t.status IN {_STOPPED_SQL});"),
        # PostgreSQL: set on the row being inserted (BEFORE INSERT), no second row version
        "outcome_stop_on_open_pg": (f"NEW.stopped := (SELECT {open_cat} FROM \"trigger\" t WHERE t.id = NEW.trigger_id "
                                    f"AND t.status IN {_STOPPED_SQL}); RETURN NEW;"),
    }


def create_statements(dialect: str) -> list[str]:
    """The DDL that installs the triggers on ``dialect``."""
    if dialect == "sqlite":
        b = _bodies("NEW")
        return [
            'CREATE TRIGGER outcome_stop_on_trigger AFTER UPDATE OF status ON "trigger" '
            f"WHEN OLD.status IS NOT NEW.status BEGIN {b['outcome_stop_on_trigger']} END",
            "CREATE TRIGGER outcome_stop_on_delivery AFTER UPDATE OF status ON delivery "
            f"WHEN NEW.status = 'suppressed' AND OLD.status IS NOT NEW.status BEGIN {b['outcome_stop_on_delivery']} END",
            "CREATE TRIGGER outcome_stop_on_delivery_insert AFTER INSERT ON delivery "
            f"WHEN NEW.status = 'suppressed' BEGIN {b['outcome_stop_on_delivery']} END",
            "CREATE TRIGGER outcome_stop_on_open AFTER INSERT ON outcome "
            f"WHEN NEW.trigger_id IS NOT NULL BEGIN {b['outcome_stop_on_open']} END",
        ]
    if dialect == "postgresql":
        b = _bodies("NEW")
        out = []
        for name in ("outcome_stop_on_trigger", "outcome_stop_on_delivery"):
            out.append(f"CREATE OR REPLACE FUNCTION {_PG_FN[name]}() RETURNS trigger LANGUAGE plpgsql AS $fn$ "
                       f"BEGIN {b[name]} RETURN NULL; END $fn$")
        out.append(f"CREATE OR REPLACE FUNCTION {_PG_FN['outcome_stop_on_open']}() RETURNS trigger LANGUAGE plpgsql AS $fn$ "
                   f"BEGIN {b['outcome_stop_on_open_pg']} END $fn$")
        out += [
            'CREATE TRIGGER outcome_stop_on_trigger AFTER UPDATE OF status ON "trigger" FOR EACH ROW '
            "WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION careloop_outcome_stop_trigger()",
            "CREATE TRIGGER outcome_stop_on_delivery AFTER INSERT OR UPDATE OF status ON delivery FOR EACH ROW "
            "WHEN (NEW.status = 'suppressed') EXECUTE FUNCTION careloop_outcome_stop_delivery()",
            "CREATE TRIGGER outcome_stop_on_open BEFORE INSERT ON outcome FOR EACH ROW "
            "WHEN (NEW.trigger_id IS NOT NULL) EXECUTE FUNCTION careloop_outcome_stop_open()",
        ]
        return out
    return []


def drop_statements(dialect: str) -> list[str]:
    if dialect == "sqlite":
        return [f"DROP TRIGGER IF EXISTS {n}" for n in NAMES["sqlite"]]
    if dialect == "postgresql":
        return [f'DROP TRIGGER IF EXISTS {n} ON "{_ON[n]}"' for n in NAMES["postgresql"]] + [
            f"DROP FUNCTION IF EXISTS {fn}()" for fn in _PG_FN.values()]
    return []


def backfill_statements() -> list[str]:
    """Categories of entries opened before the triggers existed (revision 0010)."""
    return [
        f"UPDATE outcome SET stopped = (SELECT {category_sql('t.reason', 't.status')} FROM \"trigger\" t "
        f"WHERE t.id = outcome.trigger_id AND t.status IN {_STOPPED_SQL}) WHERE trigger_id IS NOT NULL",
        f"UPDATE outcome SET stopped = (SELECT {category_sql('d.last_error')} FROM delivery d "
        "WHERE d.trigger_id = outcome.trigger_id AND d.status = 'suppressed' ORDER BY d.id LIMIT 1) "
        "WHERE stopped IS NULL AND delivered = false AND trigger_id IS NOT NULL",
    ]


def install(op: Any) -> None:
    """For migrations: (re)install the triggers; call after any batch operation on their tables."""
    dialect = op.get_bind().dialect.name
    for stmt in drop_statements(dialect) + create_statements(dialect):
        op.execute(stmt)


def _attach() -> None:
    """``create_all`` installs them once every table exists."""
    for dialect in NAMES:
        for stmt in create_statements(dialect):
            ddl = DDL(stmt.replace("%", "%%")).execute_if(dialect=dialect)  # type: ignore[no-untyped-call]
            if not event.contains(SQLModel.metadata, "after_create", ddl):
                event.listen(SQLModel.metadata, "after_create", ddl)


_attach()
