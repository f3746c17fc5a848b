"""Record the statements a block of code runs: the registry's named queries (by name; they run on
the raw DB-API cursor, past SQLAlchemy's cursor events) and any Core/ORM statement (its SQL text,
list placeholders folded so a statement reads the same whatever the length of its lists)."""
from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from middleware.storage.sql import Query, UnitOfWork


def _name(q: Any) -> str:
    return "query " + (q.name if isinstance(q, Query) else str(q))


@contextmanager
def recording(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    seen: list[str] = []
    run_one, run_many = UnitOfWork._exec, UnitOfWork.many

    def one(self: UnitOfWork, name: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(_name(name))
        return run_one(self, name, *args, **kwargs)

    def many(self: UnitOfWork, name: Any, *args: Any, **kwargs: Any) -> Any:
        if args[0] if args else kwargs.get("rows"):  # an empty list runs nothing
            seen.append(_name(name) + " (many)")
        return run_many(self, name, *args, **kwargs)

    def core(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        plain = re.sub(r"%\(\w+\)s(::\w+)?", "?", statement)  # PostgreSQL's named, cast placeholders
        seen.append(re.sub(r"\?(, \?)*", "?", plain))

    with monkeypatch.context() as m:
        m.setattr(UnitOfWork, "_exec", one)
        m.setattr(UnitOfWork, "many", many)
        event.listen(engine, "before_cursor_execute", core)
        try:
            yield seen
        finally:
            event.remove(engine, "before_cursor_execute", core)
