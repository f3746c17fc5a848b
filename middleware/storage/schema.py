"""Schema versions: open a database at the code's revision, upgrade it safely, report it.

The SQLModel metadata is the schema; ``storage/migrations`` holds its Alembic revisions, the
first of which (``0001_baseline``) is the schema of release 0.1.0. Every command opens its
database through :func:`open_database`:

* an empty database is created at the newest revision (``create_all`` plus a stamp: the
  schema comparison test proves it equal to running every migration);
* a database at the newest revision is used as it is;
* an older one (or one of release 0.1.0, which has no ``alembic_version``) is refused with a
  message naming ``careloop db upgrade`` -- except the embedded SQLite database under
  ``./.careloop/``, which is upgraded in place after a ``VACUUM INTO`` backup beside it;
* a newer one (a revision this code does not know) is refused: the code is older than the data.

Upgraders serialize: on PostgreSQL a transaction-scoped advisory lock, on SQLite a file lock
beside the database and then ``BEGIN IMMEDIATE``; the revision is read again after the lock is
taken, so the second of two concurrent upgraders finds the work done.
"""
from __future__ import annotations

import fcntl
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import SQLModel

from . import append_only  # noqa: F401  (create_all installs the audit triggers)
from . import outcome_stops  # noqa: F401  (and the outcome funnel's triggers)
from . import tables  # noqa: F401  (registers the tables on the metadata)
from .db import is_sqlite, make_engine

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

log = logging.getLogger("careloop.storage")
# Alembic says "Context impl PostgresqlImpl" at INFO each time a revision is read, and "setup plugin" when it is
# imported (now lazily, after the service's logging is configured: it would be the first line `serve` prints)
logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: ``pg_advisory_xact_lock`` key of schema changes ("careloop" in ASCII).
PG_LOCK_KEY = 0x636172656C6F6F70
#: A table every careloop database has had since release 0.1.0.
MARKER_TABLE = "inbound_message"
UNVERSIONED = "release 0.1.0 (no schema version)"


class SchemaError(RuntimeError):
    """The database is not at the revision this code needs; the message says what to do."""


@dataclass(frozen=True)
class SchemaState:
    kind: str  # empty | unversioned | current | behind | ahead
    revision: str | None
    head: str

    def describe(self) -> str:
        return self.revision or (UNVERSIONED if self.kind == "unversioned" else "empty")


@dataclass(frozen=True)
class UpgradeResult:
    before: str | None
    after: str
    created: bool = False
    backup: Path | None = None

    @property
    def changed(self) -> bool:
        return self.created or self.before != self.after


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@lru_cache(maxsize=1)
def scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


_REVISION = re.compile(r'^revision\s*=\s*"([^"]+)"\s*$', re.M)
_DOWN = re.compile(r'^down_revision\s*=\s*(?:"([^"]+)"|None)\s*$', re.M)


@lru_cache(maxsize=1)
def head_from_files() -> str | None:
    """The newest revision read from the migration files' ``revision = "..."`` / ``down_revision =
    "..."`` lines, without importing Alembic or the migrations (a third of ``careloop serve``'s
    start-up on a loaded machine went to that); ``None`` when the files do not give one chain
    head (a file in another form, branches): then :func:`head_revision` decides.
    ``tests/storage/test_schema_fast_path.py`` proves it equal to Alembic's head."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for f in (MIGRATIONS / "versions").glob("*.py"):
        if f.name.startswith("_"):
            continue
        text = f.read_text(encoding="utf-8")
        rev, down = _REVISION.findall(text), _DOWN.findall(text)
        if len(rev) != 1 or len(down) != 1:
            return None
        revisions.add(rev[0])
        if down[0]:
            parents.add(down[0])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _recorded_revision(conn: Connection) -> str | None:
    """``alembic_version``'s one row, or ``None`` (no table, no row, several rows). Never fails the
    transaction (the upgrader reads this under its schema lock)."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
    return str(rows[0][0]) if len(rows) == 1 else None


def head_revision() -> str:
    head = scripts().get_current_head()
    assert head is not None, "no migrations"
    return head


def history() -> list[tuple[str, str | None, str]]:
    """(revision, its parent, first line of its docstring), oldest first."""
    out = [(s.revision, s.down_revision if isinstance(s.down_revision, str) else None, (s.doc or "").splitlines()[0])
           for s in scripts().walk_revisions()]
    return list(reversed(out))


def _known(revision: str) -> bool:
    from alembic.util.exc import CommandError

    try:
        return scripts().get_revision(revision) is not None
    except CommandError:
        return False


def read_state(conn: Connection) -> SchemaState:
    """The database's revision against the code's. The common case (a database at the newest
    revision) is answered from the migration files and one ``SELECT`` (:func:`head_from_files`);
    anything else asks Alembic."""
    fast = head_from_files()
    if fast is not None and _recorded_revision(conn) == fast:
        return SchemaState("current", fast, fast)
    from alembic.runtime.migration import MigrationContext

    head = head_revision()
    rev = MigrationContext.configure(conn).get_current_revision()
    if rev is None:
        kind = "unversioned" if inspect(conn).has_table(MARKER_TABLE) else "empty"
    elif rev == head:
        kind = "current"
    else:
        kind = "behind" if _known(rev) else "ahead"
    return SchemaState(kind, rev, head)


def state(engine: Engine) -> SchemaState:
    with engine.connect() as conn:
        st = read_state(conn)
        conn.rollback()
    return st


def sqlite_file(engine: Engine) -> Path | None:
    """The SQLite database file, or ``None`` (PostgreSQL, in-memory)."""
    if not is_sqlite(engine):
        return None
    db = engine.url.database
    return Path(db).resolve() if db and db != ":memory:" else None


def is_embedded(url: str) -> bool:
    """The embedded default: a SQLite file under ``./.careloop/`` (``make run``, the sandbox)."""
    if not url.startswith("sqlite"):
        return False
    path = url.split("///", 1)[-1]
    if not path or path == ":memory:":
        return False
    embedded = (Path.cwd() / ".careloop").resolve()
    return Path(path).resolve().is_relative_to(embedded)


@contextmanager
def _file_lock(engine: Engine) -> Iterator[None]:
    """Serialize upgraders of one SQLite file across processes (a no-op elsewhere)."""
    db = sqlite_file(engine)
    if db is None:
        yield
        return
    with open(db.with_name(db.name + ".upgrade-lock"), "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _lock_schema(conn: Connection) -> None:
    """Take the schema lock for the rest of this connection's transaction."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (PG_LOCK_KEY,))


def vacuum_into(engine: Engine, target: Path) -> None:
    """A consistent copy of a SQLite database at ``target`` (a read: writers keep going)."""
    with engine.connect() as conn:
        conn.exec_driver_sql("VACUUM INTO ?", (str(target),))


def backup_sqlite(engine: Engine, label: str) -> Path:
    """``VACUUM INTO`` a consistent copy beside the database; return its path."""
    db = sqlite_file(engine)
    assert db is not None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = db.with_name(f"{db.stem}.backup-{label}-{stamp}{db.suffix}")
    with engine.connect() as conn:
        conn.exec_driver_sql("VACUUM INTO ?", (str(target),))
    return target


def _refuse_ahead(st: SchemaState) -> None:
    if st.kind == "ahead":
        raise SchemaError(f"the database is at schema revision {st.revision}, newer than this careloop knows "
                          f"(its newest is {st.head}): this careloop is older than the database; run the newer careloop")


def upgrade(engine: Engine, *, backup: bool = False) -> UpgradeResult:
    """Bring the database to the newest revision (create it if empty); safe to run concurrently.

    ``backup`` (SQLite files): write a ``VACUUM INTO`` copy first when there is anything to change.
    """
    head = head_revision()
    with _file_lock(engine):
        st = state(engine)
        _refuse_ahead(st)
        if st.kind == "current":
            return UpgradeResult(head, head)
        saved = None
        if backup and st.kind != "empty" and sqlite_file(engine) is not None:
            saved = backup_sqlite(engine, (st.revision or "v0.1.0"))
        with engine.connect() as conn:
            _lock_schema(conn)
            st = read_state(conn)  # again, under the lock: another upgrader may have finished meanwhile
            _refuse_ahead(st)
            if st.kind == "current":
                conn.rollback()
                return UpgradeResult(head, head, backup=saved)
            from alembic import command

            if st.kind == "empty":
                SQLModel.metadata.create_all(conn)
                command.stamp(alembic_config(conn), "head")
            else:
                command.upgrade(alembic_config(conn), "head")
            conn.commit()
    return UpgradeResult(st.revision, head, created=st.kind == "empty", backup=saved)


def ensure_current(engine: Engine, *, self_upgrade: bool = False) -> UpgradeResult | None:
    """Check the database against the code: create an empty one, refuse an older or newer one
    (raising :class:`SchemaError`), or with ``self_upgrade`` back it up and upgrade it."""
    st = state(engine)
    if st.kind == "current":
        return None
    _refuse_ahead(st)
    if st.kind == "empty":
        return upgrade(engine)
    if not self_upgrade:
        raise SchemaError(f"the database is at schema revision {st.describe()}, older than this careloop needs "
                          f"({st.head}): run `careloop db upgrade` (with the same database settings) first")
    result = upgrade(engine, backup=True)
    log.warning(f"embedded database upgraded from {st.describe()} to {result.after}; "
                f"backup written to {result.backup}", extra={"action": "storage.upgraded"})
    return result


#: How to name another database, said by every refusal of a missing or empty one.
POINT_AT = "point at yours with --database PATH|URL or CARELOOP_DATABASE_URL"


def shown_url(url: str) -> str:
    """The database as a message names it: a SQLite file's absolute path, else the URL without credentials."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        return str(Path(path).resolve()) if path and path != ":memory:" else url
    return url.split("@")[-1]


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (``None`` for in-memory and other databases)."""
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[-1].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def require_existing(url: str) -> None:
    """Refuse (:class:`SchemaError`) a SQLite file that does not exist, without creating it or its folder."""
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise SchemaError(f"no careloop database at {path.resolve()}; {POINT_AT} "
                          "(`careloop serve` creates one, `careloop db upgrade` an empty one)")


def open_database(url: str, *, synchronous: str = "FULL", self_upgrade: bool | None = None,
                  existing: bool = False) -> Engine:
    """The engine for ``url``, its schema checked (see :func:`ensure_current`). ``self_upgrade``
    defaults to "the embedded SQLite database" (:func:`is_embedded`).

    ``existing`` (every command that reads or changes data, all but ``serve`` and ``db upgrade``):
    a missing SQLite file or a never-initialized (empty) database is refused with one line naming
    it and how to point at the right one, instead of silently creating a new empty database."""
    if existing:
        require_existing(url)
    engine = make_engine(url, synchronous=synchronous)
    try:
        if existing and state(engine).kind == "empty":
            raise SchemaError(f"{shown_url(url)} is empty (never initialized by careloop); {POINT_AT}")
        ensure_current(engine, self_upgrade=is_embedded(url) if self_upgrade is None else self_upgrade)
    except OperationalError as exc:
        engine.dispose()
        first = (str(exc.orig or exc).strip().splitlines() or ["?"])[0]
        raise SchemaError(f"cannot open the database {shown_url(url)}: {first}; {POINT_AT}") from exc
    except BaseException:
        engine.dispose()
        raise
    return engine
