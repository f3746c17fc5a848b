"""Named queries compiled once per dialect, and the unit of work that runs them.

Every statement careloop runs is a SQLAlchemy Core statement built against the SQLModel
metadata and registered here under a name (:func:`query`). It is compiled once per dialect to
the DB-API's own SQL text and parameter order (SQLite ``?``, psycopg ``%s``) and executed on
the raw cursor of the unit of work's connection: no statement building, no placeholder
rewriting and no hand quoting at run time (an indexed lookup costs what the driver costs).

* :func:`param` names a parameter; literal values in a statement are bound automatically.
* :func:`any_of` compares a column with a list bound as ONE parameter (PostgreSQL
  ``col = ANY(%s)``, SQLite ``col IN (SELECT value FROM json_each(?))`` with the list sent as
  JSON), so a statement compiles once whatever the length of the list.
* Dialect constructs (``ON CONFLICT``, ``FOR UPDATE SKIP LOCKED``) are written with
  SQLAlchemy's dialect ``insert()`` / ``with_for_update(skip_locked=True)``; a query whose
  statement differs by dialect is registered as a function of the dialect name.

:class:`UnitOfWork` (:func:`unit`) owns one connection and its transaction, SQLite's
process-wide write lock (one FIFO lock per database file), ``BEGIN IMMEDIATE`` for writes and
the durability of its commit (``synchronous``); ``.session`` is an ORM session joined to the
same transaction for code that still uses the ORM.
"""
from __future__ import annotations

import fcntl
import mmap
import os
from enum import Enum
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, cast

import orjson

from sqlalchemy import BindParameter, bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.engine.interfaces import BindTyping
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import ClauseElement, ColumnElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import UserDefinedType
from sqlmodel import Session

__all__ = [
    "REGISTRY", "Query", "QueryError", "UnitOfWork", "any_of", "param", "query", "unit", "sqlite_write_lock",
    "write_lock", "dialect_of", "joined",
]

Statement = ClauseElement


class QueryError(Exception):
    """A query was registered twice, or run with a parameter it does not have."""


def param(name: str, type_: Any = None) -> BindParameter[Any]:
    """A named parameter of a registered query (``unit.one("q", name=value)``)."""
    return bindparam(name, type_=type_, required=True)


# -- lists bound as one parameter -------------------------------------------------------------


class _ListParam(UserDefinedType[Any]):
    """Marks a parameter that carries a list (JSON text on SQLite, an array on PostgreSQL)."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:  # never rendered in DDL
        return "JSON"


class AnyOf(ColumnElement[bool]):
    """``column`` equals one of the values of the list parameter ``name``."""

    inherit_cache = True

    def __init__(self, column: ColumnElement[Any], name: str) -> None:
        self.column = column
        self.param = bindparam(name, type_=_ListParam(), required=True)


@compiles(AnyOf)
def _any_of_sqlite(element: AnyOf, compiler: SQLCompiler, **kw: Any) -> str:
    return f"{compiler.process(element.column, **kw)} IN (SELECT value FROM json_each({compiler.process(element.param, **kw)}))"


@compiles(AnyOf, "postgresql")
def _any_of_pg(element: AnyOf, compiler: SQLCompiler, **kw: Any) -> str:
    return f"{compiler.process(element.column, **kw)} = ANY({compiler.process(element.param, **kw)})"


def any_of(column: Any, name: str) -> AnyOf:
    """``column`` is one of the list parameter ``name`` (one bound parameter, any length)."""
    return AnyOf(column, name)


# -- compilation ------------------------------------------------------------------------------

_DIALECTS: dict[str, Callable[[], Dialect]] = {
    "sqlite": lambda: sqlite.pysqlite.dialect(paramstyle="qmark"),
    "postgresql": lambda: _no_casts(postgresql.psycopg.dialect(paramstyle="format")),  # type: ignore[no-untyped-call]
}


def _no_casts(d: Dialect) -> Dialect:
    """Plain ``%s`` placeholders: psycopg's own type adaptation, no ``::VARCHAR`` per parameter."""
    d.bind_typing = BindTyping.NONE
    return d


def dialect_of(bind: Engine | Connection) -> str:
    return bind.dialect.name


@dataclass(frozen=True)
class Compiled:
    """One query for one dialect: the SQL text and how to build its positional parameters."""

    sql: str
    order: tuple[str, ...]  # parameter names in placeholder order (repeats allowed)
    constants: Mapping[str, Any]  # values of parameters the statement itself binds (literals)
    lists: frozenset[str]  # list parameters (JSON-encoded on SQLite)
    json_lists: bool

    def params(self, given: Mapping[str, Any]) -> tuple[Any, ...]:
        """The positional parameters for ``given`` (named values; the statement's own constants fill the rest)."""
        if self.lists:
            return self._with_lists(given)
        # the common case, in one comprehension (issue 16: ~20 statements per message pass here)
        consts = self.constants
        try:
            if not consts:
                return tuple([given[n] for n in self.order])
            return tuple([given[n] if n in given else consts[n] for n in self.order])
        except KeyError as exc:
            raise QueryError(f"missing parameter {exc.args[0]!r}") from None

    def _with_lists(self, given: Mapping[str, Any]) -> tuple[Any, ...]:
        out = []
        for name in self.order:
            if name in given:
                value = given[name]
                if self.json_lists and name in self.lists:
                    value = orjson.dumps(list(value)).decode()
                elif name in self.lists:
                    value = list(value)
            elif name in self.constants:
                value = self.constants[name]
            else:
                raise QueryError(f"missing parameter {name!r}")
            out.append(value)
        return tuple(out)


class Query:
    """A named statement (or one statement per dialect) with the row type of its results."""

    __slots__ = ("name", "stmt", "row", "_compiled", "_make")

    def __init__(self, name: str, stmt: Statement | Callable[[str], Statement], row: type[Any] | None = None) -> None:
        self.name = name
        self.stmt = stmt
        self.row = row
        self._make: Callable[[Iterable[Any]], Any] | None = getattr(row, "_make", None)
        self._compiled: dict[str, Compiled] = {}

    def statement(self, dialect_name: str) -> Statement:
        if callable(self.stmt) and not isinstance(self.stmt, ClauseElement):
            return self.stmt(dialect_name)
        return self.stmt

    def compiled_for(self, dialect_name: str) -> Compiled:
        got = self._compiled.get(dialect_name)
        if got is None:
            got = self._compiled[dialect_name] = self._compile(dialect_name)
        return got

    def compiled(self, dialect_name: str) -> tuple[str, tuple[str, ...]]:
        """``(sql_text, param_order)`` for ``dialect_name`` ("sqlite" or "postgresql"), compiled once."""
        c = self.compiled_for(dialect_name)
        return c.sql, c.order

    def _compile(self, dialect_name: str) -> Compiled:
        try:
            dialect = _DIALECTS[dialect_name]()
        except KeyError:
            raise QueryError(f"no dialect {dialect_name!r}") from None
        comp = cast(SQLCompiler, self.statement(dialect_name).compile(dialect=dialect))
        order = tuple(comp.positiontup or ())
        constants: dict[str, Any] = {}
        lists = set()
        for name, bp in comp.binds.items():
            if isinstance(bp.type, _ListParam):
                lists.add(bp.key)
            if not bp.required:
                value = bp.effective_value
                if isinstance(value, Enum):
                    value = value.value
                proc = bp.type._cached_bind_processor(dialect)
                constants[name] = proc(value) if proc is not None else value
        sql_text = comp.string
        if "__[POSTCOMPILE_" in sql_text:  # a literal list (``col.in_([...])``): render it once, bound
            required = {bp.key: None for bp in comp.binds.values() if bp.required}
            expanded = comp.construct_expanded_state(required)
            sql_text, order = expanded.statement, tuple(expanded.positiontup or ())
            for name in order:
                if name not in required:
                    value = expanded.parameters[name]
                    constants[name] = value.value if isinstance(value, Enum) else value
        # Python-side column defaults the statement leaves to SQLAlchemy (``Field(default=...)``)
        for col in [*comp.insert_prefetch, *comp.update_prefetch]:
            default = col.default if col in comp.insert_prefetch else col.onupdate
            if default is None or not getattr(default, "is_scalar", False):
                raise QueryError(f"query {self.name!r}: give column {col.key!r} a value (its default is not a constant)")
            constants[col.key] = default.arg  # type: ignore[attr-defined]
        return Compiled(sql=sql_text, order=order, constants=constants, lists=frozenset(lists),
                        json_lists=dialect_name == "sqlite")

    def __repr__(self) -> str:
        return f"Query({self.name!r})"


#: every named query, by name
REGISTRY: dict[str, Query] = {}


def query(name: str, stmt: Statement | Callable[[str], Statement], row: type[Any] | None = None) -> Query:
    """Register ``stmt`` under ``name`` (``stmt`` may be a function of the dialect name for a query
    written with dialect constructs); ``row`` is the NamedTuple its result rows are returned as."""
    if name in REGISTRY:
        raise QueryError(f"query {name!r} is already registered")
    q = REGISTRY[name] = Query(name, stmt, row)
    return q


def get(name: str) -> Query:
    try:
        return REGISTRY[name]
    except KeyError:
        raise QueryError(f"no query named {name!r}") from None


# -- SQLite's write lock ----------------------------------------------------------------------

class FileLock:
    """SQLite's write lock between processes: ``flock`` on ``<database>-wlock`` plus a shared word
    naming the process whose urgent writer (the inbox: ACKs wait for it) is waiting.

    ``serve`` stores messages in one process and runs its worker in another (a second core, its own
    GIL). SQLite itself would make a writer that finds the lock taken sleep in its busy handler
    (up to 100 ms at a time); a blocked ``flock`` wakes the moment the holder lets go. The word lets a
    writer in one process see that another process's ingest waits: processing then commits early
    (``UnitOfWork.should_yield``) and ordinary writers let it go first (for at most ``starve_s``).
    """

    __slots__ = ("fd", "_word", "pid")

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if os.fstat(self.fd).st_size < 8:
            os.pwrite(self.fd, bytes(8), 0)
        self._word = mmap.mmap(self.fd, 8)
        self.pid = os.getpid()

    @classmethod
    def beside(cls, database: str) -> "FileLock | None":
        """The lock of the SQLite file ``database`` (``None`` for an in-memory database, or where the
        lock file cannot be made: then this process's threads still hand over through :class:`WriteLock`)."""
        if not database or database == ":memory:" or database.startswith("file::memory:"):
            return None
        try:
            return cls(os.path.realpath(database) + "-wlock")
        except OSError:
            return None

    def urgent_elsewhere(self) -> bool:
        """An urgent writer of another process waits for (or is taking) the lock (a hint)."""
        pid = int.from_bytes(self._word[:8], "little")
        return pid != 0 and pid != self.pid

    def acquire(self, urgent: bool, starve_s: float) -> None:
        if urgent:
            self._word[:8] = self.pid.to_bytes(8, "little")
        else:
            deadline = time.monotonic() + starve_s
            while self.urgent_elsewhere() and time.monotonic() < deadline:
                time.sleep(0.0002)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)  # blocks without the GIL; woken when the holder unlocks
        finally:
            if urgent and int.from_bytes(self._word[:8], "little") == self.pid:
                self._word[:8] = bytes(8)

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)


class _Waiter:
    """A thread waiting for a :class:`WriteLock`: a gate (a held lock) the releaser opens."""

    __slots__ = ("ident", "since", "gate")

    def __init__(self, ident: int) -> None:
        self.ident = ident
        self.since = time.monotonic()
        self.gate = threading.Lock()
        self.gate.acquire()


class WriteLock:
    """A reentrant lock with two classes of waiters (issue 16: ingest never waits for processing).

    * **urgent** waiters (the inbox writer: a commit that ACKs are waiting for) are served before
      ordinary ones, in arrival order among themselves;
    * **ordinary** waiters (processing, scheduler, delivery, admin writes) are served in arrival
      order: a thread that releases the lock and asks again at once queues behind one already waiting.

    An ordinary waiter that has waited ``starve_s`` is served before later urgent ones, so a flood
    of ingest cannot stall processing for ever. A holder doing long work in small transactions asks
    :attr:`urgent_waiting` between them and commits early (``UnitOfWork.should_yield``).

    The releaser hands the lock to the one waiter served next and wakes that thread only (each
    waiter sleeps on a gate of its own: a shared condition's ``notify_all`` woke every waiter to
    find out which one may go, 7.7 % of the GIL's samples in ``serve`` with its worker).

    With a :class:`FileLock` the holder also holds the database's lock between processes (taken
    after this one, so a process's threads queue here and only one of them at a time waits there).
    """

    __slots__ = ("_guard", "_owner", "_depth", "_queue", "_urgent", "starve_s", "file")

    def __init__(self, starve_s: float = 0.05, file: FileLock | None = None) -> None:
        self._guard = threading.Lock()
        self._owner: int | None = None
        self._depth = 0
        self._queue: deque[_Waiter] = deque()  # ordinary waiters, in arrival order
        self._urgent: deque[_Waiter] = deque()
        self.starve_s = starve_s
        self.file = file

    @property
    def urgent_waiting(self) -> bool:
        """An urgent writer (of this process, or of another one on the same file) waits for this
        lock (read without locking: a hint, checked again by the lock)."""
        return bool(self._urgent) or (self.file is not None and self.file.urgent_elsewhere())

    def _pop_next(self) -> _Waiter | None:
        """Take the waiter served next off its queue (call with ``_guard`` held)."""
        if self._urgent and (not self._queue or time.monotonic() - self._queue[0].since < self.starve_s):
            return self._urgent.popleft()
        if self._queue:
            return self._queue.popleft()
        return None

    def acquire(self, blocking: bool = True, urgent: bool = False) -> bool:
        me = threading.get_ident()
        with self._guard:
            if self._owner == me:
                self._depth += 1
                return True
            if self._owner is None and not self._queue and not self._urgent:
                self._owner, self._depth = me, 1
                waiter = None
            elif not blocking:
                return False
            else:
                waiter = _Waiter(me)
                (self._urgent if urgent else self._queue).append(waiter)
        if waiter is not None:
            waiter.gate.acquire()  # opened by the releaser, which made this thread the owner
        if self.file is not None:
            try:
                self.file.acquire(urgent, self.starve_s)
            except BaseException:
                self._let_go()
                raise
        return True

    def release(self) -> None:
        with self._guard:
            if self._owner != threading.get_ident():
                raise RuntimeError("release of a write lock this thread does not hold")
            if self._depth > 1:
                self._depth -= 1
                return
        if self.file is not None:
            self.file.release()
        self._let_go()

    def _let_go(self) -> None:
        """Hand the lock to the next waiter (it becomes the owner before it wakes), or free it."""
        with self._guard:
            nxt = self._pop_next()
            if nxt is None:
                self._owner, self._depth = None, 0
            else:
                self._owner, self._depth = nxt.ident, 1
                nxt.gate.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


_WRITE_LOCKS: dict[str, WriteLock] = {}
_LOCKS_GUARD = threading.Lock()


def sqlite_write_lock(engine: Engine | Connection) -> WriteLock | None:
    """The process's write lock for this SQLite database (``None`` on PostgreSQL).

    SQLite has one write lock; a writer that finds it taken sleeps in SQLite's busy handler for
    up to 100 ms at a time, so an ingest commit waiting behind a processing batch would stall
    ACKs. Threads of one process hand the lock over at once through this lock instead, and
    processes (``serve`` and its worker process, CLI commands) through its :class:`FileLock`.
    """
    if engine.dialect.name != "sqlite":
        return None
    url = engine.engine.url if isinstance(engine, Connection) else engine.url
    key = url.database or ""  # the file (not str(url): that quotes the URL on every call)
    lock = _WRITE_LOCKS.get(key)
    if lock is None:
        with _LOCKS_GUARD:
            lock = _WRITE_LOCKS.get(key)
            if lock is None:
                lock = _WRITE_LOCKS[key] = WriteLock(file=FileLock.beside(key))
    return lock


@contextmanager
def write_lock(engine: Engine) -> Iterator[None]:
    """Hold this process's SQLite write lock (a no-op on PostgreSQL)."""
    lock = sqlite_write_lock(engine)
    if lock is None:
        yield
        return
    with lock:
        yield


# -- the unit of work -------------------------------------------------------------------------


@dataclass
class UnitOfWork:
    """One connection and its transaction. Use through :func:`unit`."""

    engine: Engine
    write: bool = False
    durable: bool = True
    conn: Connection = field(init=False)
    dialect: str = field(init=False)
    sqlite: bool = field(init=False)
    _cur: Any = field(init=False, default=None)
    _session: Session | None = field(init=False, default=None)
    _pipe: Any = field(init=False, default=None)  # psycopg's Pipeline while in pipeline mode
    _rcur: Any = field(init=False, default=None)  # the cursor reads use in pipeline mode
    _queued: bool = field(init=False, default=False)  # pipeline: statements sent since the last read
    _lock: WriteLock | None = field(init=False, default=None)
    _sync_before: int = field(init=False, default=0)
    _joined: bool = field(init=False, default=False)
    _sp_depth: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.dialect = self.engine.dialect.name
        self.sqlite = self.dialect == "sqlite"

    # transaction control
    def _open(self) -> None:
        if self.sqlite and self.write:
            self._lock = sqlite_write_lock(self.engine)
            assert self._lock is not None
            self._lock.acquire()
        try:
            self.conn = self.engine.connect()
            dbapi = self.conn.connection.driver_connection
            self._cur = dbapi.cursor()  # type: ignore[union-attr]
            if self.sqlite and not self.durable:
                # the connection's own setting, read once per connection (every processing batch asked)
                info = self.conn.connection.info
                sync = info.get("careloop.synchronous")
                if sync is None:
                    sync = info["careloop.synchronous"] = int(self._cur.execute("PRAGMA synchronous").fetchone()[0])
                self._sync_before = sync
                if self._sync_before > 1:
                    self._cur.execute("PRAGMA synchronous=NORMAL")
            self._begin()
        except BaseException:
            self._release()
            raise

    def _begin(self) -> None:
        self.conn.begin()
        if self.sqlite:
            # BEGIN IMMEDIATE takes SQLite's write lock up front: a deferred transaction that read
            # and then writes after another connection committed fails at once (SQLITE_BUSY_SNAPSHOT)
            self._cur.execute("BEGIN IMMEDIATE" if self.write else "BEGIN")

    def _release(self) -> None:
        try:
            if getattr(self, "conn", None) is not None and not self.conn.closed:
                if self.sqlite and not self.durable:
                    try:
                        if self.conn.in_transaction():
                            self.conn.rollback()
                        if self._sync_before > 1:
                            self._cur.execute(f"PRAGMA synchronous={self._sync_before}")
                    except Exception:
                        self.conn.invalidate()
                self.conn.close()
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def commit(self) -> None:
        if self._session is not None:
            self._session.flush()
        self.conn.commit()

    def rollback(self) -> None:
        if self._session is not None:
            self._session.expunge_all()
        self.conn.rollback()

    def should_yield(self) -> bool:
        """True when an urgent writer (the inbox: ACKs wait for it) waits for this unit's SQLite write
        lock: a long job working in small steps commits and lets it in (always False on PostgreSQL)."""
        return self._lock is not None and self._lock.urgent_waiting

    def commit_and_continue(self) -> None:
        """Commit what is done so far and go on in a new transaction (another writer of this
        process may take SQLite's lock in between)."""
        self.commit()
        if self._lock is not None:
            self._lock.release()
            self._lock.acquire()
        self._begin()

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested transaction: rolled back alone when the block raises (and the error re-raised).

        In pipeline mode the statements of the block are sent with its reads and checked at its
        end (one round trip), so an error is always reported inside the block that caused it."""
        if self._pipe is not None:
            cur = self._cur
            cur.execute("SAVEPOINT careloop_unit")
            try:
                yield
                cur.execute("RELEASE SAVEPOINT careloop_unit")
                if self._queued:  # a write whose outcome is not known yet: check it inside this block
                    self._pipe.sync()
                    self._queued = False
            except BaseException:
                try:
                    self._pipe.sync()  # send what is queued (or clear the pipeline's aborted state)
                except Exception:  # noqa: S110 (the statement in error is rolled back just below)
                    pass
                cur.execute("ROLLBACK TO SAVEPOINT careloop_unit")
                cur.execute("RELEASE SAVEPOINT careloop_unit")
                self._pipe.sync()
                self._queued = False
                raise
            return
        if self._joined and self._session is not None:
            with self._session.begin_nested():
                yield
            return
        if self._session is not None:
            self._session.flush()
        # on the DB-API cursor (one statement each way, ~1 µs; SQLAlchemy's nested transaction
        # object cost ~20x that per message): a name per depth, so blocks nest
        cur, name = self._cur, f"careloop_sp{self._sp_depth}"
        self._sp_depth += 1
        cur.execute(f"SAVEPOINT {name}")
        try:
            yield
            if self._session is not None:
                self._session.flush()
        except BaseException:
            cur.execute(f"ROLLBACK TO SAVEPOINT {name}")
            cur.execute(f"RELEASE SAVEPOINT {name}")
            if self._session is not None:
                self._session.expunge_all()
            raise
        else:
            cur.execute(f"RELEASE SAVEPOINT {name}")
        finally:
            self._sp_depth -= 1

    @contextmanager
    def pipeline(self) -> Iterator[None]:
        """PostgreSQL: queue statements whose results are not read (:meth:`send`, :meth:`many`,
        savepoints) and send them with the next read, one round trip instead of one each
        (psycopg's pipeline mode). The ORM session must not be used inside. SQLite: no-op."""
        if self.sqlite or self._pipe is not None:
            yield
            return
        dbapi = self.conn.connection.driver_connection
        with dbapi.pipeline() as pipe:  # type: ignore[union-attr]
            self._pipe, self._rcur = pipe, dbapi.cursor()  # type: ignore[union-attr]
            try:
                yield
            finally:
                self._pipe = self._rcur = None

    @property
    def session(self) -> Session:
        """An ORM session on this unit's connection and transaction (for code not yet converted)."""
        if self._session is None:
            self._session = Session(bind=self.conn, join_transaction_mode="rollback_only", expire_on_commit=False,
                                    autoflush=True)
        return self._session

    # statements
    def _exec(self, name: str | Query, /, params: Mapping[str, Any], cur: Any = None) -> Query:
        q = name if isinstance(name, Query) else REGISTRY.get(name) or get(name)
        c = q.compiled_for(self.dialect)
        if self._session is not None and self._pipe is None:
            self._session.flush()
        (cur or self._cur).execute(c.sql, c.params(params) if c.order else ())
        return q

    def _reader(self) -> Any:
        return self._cur if self._rcur is None else self._rcur

    def send(self, name: str | Query, /, **params: Any) -> None:
        """Execute a statement whose result is not needed (queued in pipeline mode)."""
        self._exec(name, params)
        self._queued = self._pipe is not None

    def fetch(self, *calls: tuple[str | Query, Mapping[str, Any]]) -> list[list[Any]]:
        """Several independent reads; their rows, in order. One round trip in pipeline mode."""
        if self._pipe is None:
            return [self.all(name, **params) for name, params in calls]
        dbapi = self.conn.connection.driver_connection
        pending = []
        for name, params in calls:
            cur = dbapi.cursor()  # type: ignore[union-attr]
            pending.append((self._exec(name, params, cur), cur))
        out = []
        for q, cur in pending:
            rows = cur.fetchall()
            out.append([q._make(r) for r in rows] if q._make is not None else [tuple(r) for r in rows])
        self._queued = False  # the results arrive in order: every earlier statement has been checked
        return out

    def run(self, name: str | Query, /, **params: Any) -> int:
        """Execute; return the number of rows changed (waits for the server in pipeline mode)."""
        self._exec(name, params)
        if self._pipe is not None:
            self._pipe.sync()
            self._queued = False
        return int(self._cur.rowcount or 0)

    def many(self, name: str | Query, /, rows: Sequence[Mapping[str, Any]]) -> None:
        """Execute once per parameter set (``executemany``; one batch on psycopg)."""
        if not rows:
            return
        q = name if isinstance(name, Query) else REGISTRY.get(name) or get(name)
        c = q.compiled_for(self.dialect)
        if self._session is not None and self._pipe is None:
            self._session.flush()
        self._cur.executemany(c.sql, [c.params(r) for r in rows])
        self._queued = self._pipe is not None

    def one(self, name: str | Query, /, **params: Any) -> Any:
        """The first row (as the query's row type), or ``None``."""
        cur = self._reader()
        q = self._exec(name, params, cur)
        row = cur.fetchone()
        self._queued = False
        if row is None:
            return None
        return q._make(row) if q._make is not None else tuple(row)

    def all(self, name: str | Query, /, **params: Any) -> list[Any]:
        cur = self._reader()
        q = self._exec(name, params, cur)
        rows = cur.fetchall()
        self._queued = False
        make = q._make
        return [make(r) for r in rows] if make is not None else [tuple(r) for r in rows]

    def scalar(self, name: str | Query, /, **params: Any) -> Any:
        """The first column of the first row, or ``None``."""
        cur = self._reader()
        self._exec(name, params, cur)
        row = cur.fetchone()
        self._queued = False
        return None if row is None else row[0]

    def driver_sql(self, sql: str) -> None:
        """Run fixed driver SQL (PRAGMAs and the like) -- storage modules only."""
        self._cur.execute(sql)


def joined(session: Session) -> UnitOfWork:
    """A unit of work on ``session``'s connection and transaction, for code that owns a session
    (the session's owner commits; no lock is taken here)."""
    bind = session.get_bind()
    u = UnitOfWork(bind.engine if isinstance(bind, Connection) else bind)
    u.conn = session.connection()
    u._cur = u.conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    u._session = session
    u._joined = True
    return u


@contextmanager
def unit(engine: Engine, write: bool = False, durable: bool = True) -> Iterator[UnitOfWork]:
    """A unit of work: committed when the block ends, rolled back when it raises.

    ``write=True`` on SQLite takes the process's write lock and ``BEGIN IMMEDIATE``;
    ``durable=False`` commits with ``PRAGMA synchronous=NORMAL`` on SQLite (for work whose
    loss in a power cut is redone from durable input)."""
    u = UnitOfWork(engine, write=write, durable=durable)
    u._open()
    try:
        yield u
        if u.conn.in_transaction():
            u.commit()
    except BaseException:
        try:
            if u.conn.in_transaction():
                u.rollback()
        finally:
            if u._session is not None:
                u._session.close()
            u._release()
        raise
    if u._session is not None:
        u._session.close()
    u._release()
