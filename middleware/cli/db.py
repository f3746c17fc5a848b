"""``careloop db upgrade | current | history``: the database schema's revision, and upgrading it.

One line per outcome; exit status 0 when the database is (now) at this careloop's revision,
1 when it is older or empty (``current``), 2 when it cannot be used (newer than this careloop,
unreachable).
"""
from __future__ import annotations

import argparse
import sys

from .serve import add_common, settings_from


def _fail(message: str) -> int:
    print(f"careloop db: {message}", file=sys.stderr)
    return 2


def _engine(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from ..storage.db import make_engine

    return make_engine(settings_from(args).database_url)


def cmd_upgrade(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from ..storage.schema import SchemaError, UNVERSIONED, sqlite_file, upgrade

    engine = _engine(args)
    try:
        result = upgrade(engine, backup=sqlite_file(engine) is not None and not args.no_backup)
    except SchemaError as exc:
        return _fail(str(exc))
    except SQLAlchemyError as exc:
        return _fail(f"upgrade failed, nothing changed ({type(exc).__name__}: {str(getattr(exc, 'orig', None) or exc).splitlines()[0]})")
    finally:
        engine.dispose()
    if result.created:
        print(f"created a new database at schema revision {result.after}")
    elif not result.changed:
        print(f"already at schema revision {result.after}; nothing to do")
    else:
        saved = f"; backup written to {result.backup}" if result.backup else ""
        print(f"upgraded from {result.before or UNVERSIONED} to {result.after}{saved}")
    return 0


def cmd_current(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from ..storage.schema import SchemaError, require_existing, state

    try:
        require_existing(settings_from(args).database_url)
    except SchemaError as exc:
        return _fail(str(exc))
    engine = _engine(args)
    try:
        st = state(engine)
    except SQLAlchemyError as exc:
        return _fail(f"cannot read the database ({type(exc).__name__}: "
                     f"{(str(getattr(exc, 'orig', None) or exc).strip().splitlines() or ['?'])[0]})")
    finally:
        engine.dispose()
    if st.kind == "current":
        print(f"{st.revision} (head: up to date)")
        return 0
    if st.kind == "ahead":
        print(f"{st.revision}: newer than this careloop (its head is {st.head}); run the newer careloop")
        return 2
    if st.kind == "empty":
        print(f"empty database; `careloop db upgrade` creates it at {st.head}")
        return 1
    print(f"{st.describe()}: older than this careloop ({st.head}); run `careloop db upgrade`")
    return 1


def cmd_history(args: argparse.Namespace) -> int:
    from ..storage.schema import head_revision, history

    head = head_revision()
    for rev, parent, doc in history():
        print(f"{parent or '<base>'} -> {rev}{' (head)' if rev == head else ''}: {doc}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("db", help="the database schema: upgrade, current revision, history")
    dsub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = dsub.add_parser("upgrade", help="upgrade the database to this careloop's schema (creates an empty one)")
    up.add_argument("--no-backup", action="store_true", help="SQLite: skip the VACUUM INTO backup written first")
    add_common(up)
    up.set_defaults(func=cmd_upgrade)
    cur = dsub.add_parser("current", help="the database's schema revision, against this careloop's")
    add_common(cur)
    cur.set_defaults(func=cmd_current)
    hist = dsub.add_parser("history", help="every schema revision this careloop knows, oldest first")
    hist.set_defaults(func=cmd_history)
