"""Named queries (storage/sql.py): compiled once per dialect, run on the raw cursor of one unit of
work, on SQLite and PostgreSQL."""
from __future__ import annotations

import sqlite3
import threading
from typing import NamedTuple

import pytest
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from middleware.storage import sql
from middleware.storage.db import init_db, make_engine
from middleware.storage.sql import Query, QueryError, any_of, param, query, unit
from middleware.storage.statuses import InboundStatus
from middleware.storage.tables import KeyValue as KV

T = SQLModel.metadata.tables
ident = T["resource_identity"]
inbound = T["inbound_message"]
kv = T["kv"]


class Ident(NamedTuple):
    identifier: str
    resource_key: str


def _upsert(dialect: str) -> object:
    ins = (sqlite if dialect == "sqlite" else postgresql).insert(ident)
    stmt = ins.values(identifier=param("identifier"), resource_key=param("key"))
    return stmt.on_conflict_do_update(index_elements=[ident.c.identifier], set_={"resource_key": stmt.excluded.resource_key})


def _insert_new(dialect: str) -> object:
    ins = (sqlite if dialect == "sqlite" else postgresql).insert(ident)
    return (ins.values(identifier=param("identifier"), resource_key=param("key"))
            .on_conflict_do_nothing(index_elements=[ident.c.identifier]).returning(ident.c.identifier))


Q_ADD = query("test.ident.add", ident.insert().values(identifier=param("identifier"), resource_key=param("key")))
Q_NEW = query("test.ident.new", _insert_new)  # type: ignore[arg-type]
Q_UPSERT = query("test.ident.upsert", _upsert)  # type: ignore[arg-type]
Q_GET = query("test.ident.get", select(ident.c.identifier, ident.c.resource_key).where(ident.c.identifier == param("identifier")),
              Ident)
Q_ANY = query("test.ident.any", select(ident.c.identifier, ident.c.resource_key)
              .where(any_of(ident.c.identifier, "ids")).order_by(ident.c.identifier), Ident)
Q_INBOUND = query("test.inbound.add", inbound.insert().values(
    source="s", channel="mllp", received_at=param("at"), raw=b"x", sha256="0" * 64, status=param("status")))
Q_RECEIVED = query("test.inbound.claim", select(inbound.c.id)
                   .where(inbound.c.status == InboundStatus.RECEIVED).order_by(inbound.c.id).limit(param("n"))
                   .with_for_update(skip_locked=True))
Q_IDS = query("test.inbound.by_ids", select(inbound.c.id).where(any_of(inbound.c.id, "ids")).order_by(inbound.c.id))


@pytest.fixture
def engine(db_url: str) -> Engine:
    eng = make_engine(db_url)
    init_db(eng)
    return eng


def _keys(engine: Engine) -> list[tuple[str, str]]:
    with unit(engine) as u:
        return [tuple(r) for r in u.all("test.ident.any", ids=["a", "b", "c", "d", "e"])]  # type: ignore[misc]


def test_compiled_once_per_dialect_and_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    q = Query("test.local", select(ident.c.resource_key).where(ident.c.identifier == param("identifier")))
    calls: list[str] = []
    real = Query._compile

    def counting(self: Query, dialect: str) -> object:
        calls.append(dialect)
        return real(self, dialect)

    monkeypatch.setattr(Query, "_compile", counting)
    lite = q.compiled("sqlite")
    pg = q.compiled("postgresql")
    assert q.compiled("sqlite") is not None and q.compiled("postgresql") == pg
    assert calls == ["sqlite", "postgresql"]
    assert lite == ("SELECT resource_identity.resource_key \nFROM resource_identity \nWHERE resource_identity.identifier = ?",
                    ("identifier",))
    assert pg[0].endswith("WHERE resource_identity.identifier = %s") and pg[1] == ("identifier",)


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(QueryError, match="already registered"):
        query("test.ident.get", select(ident.c.identifier))
    assert sql.REGISTRY["test.ident.get"] is Q_GET


def test_literals_are_bound_and_percent_signs_survive() -> None:
    q = Query("test.like", select(ident.c.identifier).where(ident.c.identifier.like("50%"), ident.c.resource_key == "k"))
    text_pg, order = q.compiled("postgresql")
    assert "%s" in text_pg and "50%" not in text_pg and "'k'" not in text_pg
    c = q.compiled_for("postgresql")
    assert c.params({}) == ("50%", "k")


def test_one_all_scalar_and_row_types(engine: Engine) -> None:
    with unit(engine, write=True) as u:
        assert u.run("test.ident.add", identifier="a", key="Appointment/1") == 1
        u.many("test.ident.add", [{"identifier": "b", "key": "Appointment/2"}, {"identifier": "c", "key": "Appointment/3"}])
    with unit(engine) as u:
        row = u.one("test.ident.get", identifier="a")
        assert isinstance(row, Ident) and row == Ident("a", "Appointment/1") and row.resource_key == "Appointment/1"
        assert u.one("test.ident.get", identifier="zz") is None
        assert u.scalar("test.ident.get", identifier="b") == "b"
        assert u.scalar("test.ident.get", identifier="zz") is None
        assert [r.identifier for r in u.all("test.ident.any", ids=["c", "a"])] == ["a", "c"]
        with pytest.raises(QueryError, match="missing parameter 'identifier'"):
            u.one("test.ident.get")
        with pytest.raises(QueryError, match="no query named"):
            u.one("test.nothing")


@pytest.mark.parametrize("ids,expected", [([], []), (["b"], ["b"]), (["e", "a", "b", "zz", "b"], ["a", "b", "e"])])
def test_any_of_binds_a_list_as_one_parameter(engine: Engine, ids: list[str], expected: list[str]) -> None:
    with unit(engine, write=True) as u:
        u.many("test.ident.add", [{"identifier": i, "key": f"k{i}"} for i in "abcde"])
    with unit(engine) as u:
        assert [r.identifier for r in u.all("test.ident.any", ids=ids)] == expected
    lite, order = Q_ANY.compiled("sqlite")
    assert "json_each(?)" in lite and order == ("ids",)
    pg, order = Q_ANY.compiled("postgresql")
    assert "= ANY(%s)" in pg and order == ("ids",)


def test_any_of_with_integers(engine: Engine) -> None:
    with unit(engine, write=True) as u:
        for i in range(4):
            u.run("test.inbound.add", at=float(i), status=InboundStatus.RECEIVED)
        ids = [r[0] for r in u.all("test.inbound.claim", n=10)]
    with unit(engine) as u:
        assert [r[0] for r in u.all("test.inbound.by_ids", ids=ids[1:3])] == ids[1:3]
        assert u.all("test.inbound.by_ids", ids=[]) == []


def test_on_conflict_do_nothing_and_do_update(engine: Engine) -> None:
    with unit(engine, write=True) as u:
        assert u.scalar("test.ident.new", identifier="a", key="first") == "a"
        assert u.scalar("test.ident.new", identifier="a", key="second") is None  # nothing inserted
        assert u.one("test.ident.get", identifier="a").resource_key == "first"
        u.run("test.ident.upsert", identifier="a", key="third")
        u.run("test.ident.upsert", identifier="b", key="new")
    assert _keys(engine) == [("a", "third"), ("b", "new")]
    assert "ON CONFLICT (identifier) DO NOTHING" in Q_NEW.compiled("sqlite")[0]
    assert "ON CONFLICT (identifier) DO UPDATE SET resource_key = excluded.resource_key" in Q_UPSERT.compiled("postgresql")[0]


def test_skip_locked_is_compiled_only_for_postgresql() -> None:
    assert "FOR UPDATE" not in Q_RECEIVED.compiled("sqlite")[0]
    assert Q_RECEIVED.compiled("postgresql")[0].rstrip().endswith("FOR UPDATE SKIP LOCKED")


def test_skip_locked_claims_disjoint_rows_on_postgresql(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    init_db(engine)
    with unit(engine, write=True) as u:
        for i in range(4):
            u.run("test.inbound.add", at=float(i), status=InboundStatus.RECEIVED)
    with unit(engine, write=True) as first:
        mine = [r[0] for r in first.all("test.inbound.claim", n=2)]
        with unit(engine, write=True) as second:
            theirs = [r[0] for r in second.all("test.inbound.claim", n=10)]
    assert len(mine) == 2 and len(theirs) == 2 and not set(mine) & set(theirs)


def test_exception_rolls_the_unit_back(engine: Engine) -> None:
    with pytest.raises(RuntimeError):
        with unit(engine, write=True) as u:
            u.run("test.ident.add", identifier="a", key="k")
            u.session.add(KV(key="kv1", value="{}", updated_at=1.0))
            u.session.flush()
            raise RuntimeError("boom")
    assert _keys(engine) == []
    with unit(engine) as u:
        assert u.session.get(KV, "kv1") is None


def test_savepoint_rolls_back_alone_and_commit_and_continue(engine: Engine) -> None:
    with unit(engine, write=True) as u:
        u.run("test.ident.add", identifier="a", key="k")
        with pytest.raises(ValueError):
            with u.savepoint():
                u.run("test.ident.add", identifier="b", key="k")
                raise ValueError("one message fails")
        with u.savepoint():
            u.run("test.ident.add", identifier="c", key="k")
        u.commit_and_continue()
        u.run("test.ident.add", identifier="d", key="k")
        u.rollback()
    assert [k for k, _ in _keys(engine)] == ["a", "c"]


def test_session_joins_the_units_transaction(engine: Engine) -> None:
    with unit(engine, write=True) as u:
        u.session.add(KV(key="kv1", value='{"a": 1}', updated_at=1.0))
        assert u.one("test.ident.get", identifier="none") is None  # flushes the session first
        row = u.conn.exec_driver_sql("SELECT value FROM kv WHERE key = 'kv1'").scalar()
        assert row == '{"a": 1}'
    with unit(engine) as u:
        got = u.session.get(KV, "kv1")
        assert got is not None and got.value == '{"a": 1}'


def test_sqlite_write_unit_holds_the_process_lock_and_begin_immediate(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/w.db"
    engine = make_engine(url)
    init_db(engine)
    lock = sql.sqlite_write_lock(engine)
    assert lock is not None and lock is sql.sqlite_write_lock(make_engine(url))  # one lock per database file
    other = sqlite3.connect(url.split("///", 1)[1], timeout=0)
    taken: list[bool] = []
    with unit(engine, write=True) as u:
        assert u.conn.connection.driver_connection.in_transaction  # type: ignore[union-attr]
        t = threading.Thread(target=lambda: taken.append(lock.acquire(blocking=False)))
        t.start()
        t.join()
        assert taken[-1] is False  # another thread of this process waits for the lock
        # BEGIN IMMEDIATE: SQLite's own write lock is held before this unit has written anything
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("INSERT INTO kv (key, value, updated_at) VALUES ('x', '{}', 0)")
    other.execute("INSERT INTO kv (key, value, updated_at) VALUES ('x', '{}', 0)")
    other.commit()
    with unit(engine) as u:  # a read unit takes neither lock
        t = threading.Thread(target=lambda: taken.append(lock.acquire(blocking=False)) or lock.release())
        t.start()
        t.join()
        assert taken[-1] is True
        other.execute("INSERT INTO kv (key, value, updated_at) VALUES ('y', '{}', 0)")
        other.commit()
    other.close()


def test_sqlite_non_durable_unit_uses_synchronous_normal_and_restores(tmp_path: object) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/d.db")
    init_db(engine)

    def sync(u: sql.UnitOfWork) -> int:
        return int(u.conn.exec_driver_sql("PRAGMA synchronous").scalar() or 0)

    with unit(engine, write=True, durable=False) as u:
        assert sync(u) == 1
        conn_id = id(u.conn.connection.driver_connection)
    with unit(engine, write=True) as u:
        assert id(u.conn.connection.driver_connection) == conn_id  # the pooled connection, back at FULL
        assert sync(u) == 2
    for _ in range(2):  # the connection's setting is read once and kept: the same switch and restore each time
        with unit(engine, write=True, durable=False) as u:
            assert id(u.conn.connection.driver_connection) == conn_id
            assert sync(u) == 1
        with unit(engine, write=True) as u:
            assert sync(u) == 2


def test_the_write_lock_is_handed_over_in_arrival_order() -> None:
    """A thread that releases the lock and asks again at once queues behind a waiting thread."""
    lock = sql.WriteLock()
    order: list[str] = []
    waiting = threading.Event()

    def other() -> None:
        waiting.set()
        with lock:
            order.append("other")

    with lock:
        with lock:  # reentrant
            t = threading.Thread(target=other)
            t.start()
            waiting.wait()
            while not lock._queue:  # the other thread is queued
                pass
    with lock:  # released and asked again at once: the waiting thread goes first
        order.append("me")
    t.join()
    assert order == ["other", "me"]
    assert lock.acquire(blocking=False) and lock.acquire(blocking=False)
    lock.release()
    lock.release()
    with pytest.raises(RuntimeError):
        lock.release()


def test_pipeline_mode_reports_an_error_in_the_savepoint_that_caused_it(engine: Engine) -> None:
    """PostgreSQL queues ``send`` writes until the next read or the end of the savepoint; an error
    is raised inside the block that caused it and only that block is rolled back (SQLite: the
    same calls, run at once)."""
    from sqlalchemy.exc import IntegrityError as SAIntegrityError

    errors = (sqlite3.IntegrityError, SAIntegrityError)
    try:
        import psycopg

        errors = (*errors, psycopg.errors.UniqueViolation)  # type: ignore[assignment]
    except ImportError:  # pragma: no cover
        pass
    with unit(engine, write=True) as u:
        with u.pipeline():
            with u.savepoint():
                u.send("test.ident.add", identifier="a", key="k1")
                u.send("test.ident.add", identifier="b", key="k1")
            with pytest.raises(errors):
                with u.savepoint():
                    u.send("test.ident.add", identifier="c", key="k2")
                    u.send("test.ident.add", identifier="a", key="k2")  # duplicate key
            with u.savepoint():
                u.send("test.ident.add", identifier="d", key="k3")
                got = u.fetch(("test.ident.get", {"identifier": "a"}), ("test.ident.any", {"ids": ["b", "c", "d"]}))
            assert got == [[("a", "k1")], [("b", "k1"), ("d", "k3")]]
            assert u.run("test.ident.upsert", identifier="d", key="k4") == 1
    assert _keys(engine) == [("a", "k1"), ("b", "k1"), ("d", "k4")]
