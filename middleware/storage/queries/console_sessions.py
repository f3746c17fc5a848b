"""Console sessions (``console_session``): open, find, touch, end one, end a user's, purge the expired.

Rows are keyed by the SHA-256 of the cookie's token; every replica reads the same table, so a
session opened on one is valid on all and a sign-out anywhere ends it everywhere."""
from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import delete, insert, or_, select, update

from ..sql import UnitOfWork, param, query
from ._tables import table

CONSOLE_SESSION = table("console_session")
_S = CONSOLE_SESSION.c


class SessionRecord(NamedTuple):
    token_sha256: str
    user_name: str
    roles: str
    permissions: str
    method: str
    csrf: str
    created_at: float
    last_seen: float
    expires_at: float


_COLUMNS = SessionRecord._fields

query("console_session.add", insert(CONSOLE_SESSION).values({c: param(c) for c in _COLUMNS}))
query("console_session.get", select(*(getattr(_S, c) for c in _COLUMNS)).where(_S.token_sha256 == param("token_sha256")),
      SessionRecord)
query("console_session.touch", update(CONSOLE_SESSION).where(_S.token_sha256 == param("token_sha256"),
                                                              _S.last_seen < param("before")).values(last_seen=param("now")))
query("console_session.delete", delete(CONSOLE_SESSION).where(_S.token_sha256 == param("token_sha256")))
query("console_session.delete_user", delete(CONSOLE_SESSION).where(_S.user_name == param("user_name")))
query("console_session.purge", delete(CONSOLE_SESSION).where(or_(_S.expires_at <= param("now"),
                                                                 _S.last_seen <= param("idle_before"))))
query("console_session.count_user", select(_S.token_sha256).where(_S.user_name == param("user_name")))


def add(u: UnitOfWork, row: SessionRecord) -> None:
    u.run("console_session.add", **row._asdict())


def get(u: UnitOfWork, token_sha256: str) -> SessionRecord | None:
    found: SessionRecord | None = u.one("console_session.get", token_sha256=token_sha256)
    return found


def touch(u: UnitOfWork, token_sha256: str, now: float, every_s: float) -> bool:
    """Set ``last_seen`` to ``now`` unless it was written less than ``every_s`` ago; True when written."""
    return u.run("console_session.touch", token_sha256=token_sha256, before=now - every_s, now=now) > 0


def delete_one(u: UnitOfWork, token_sha256: str) -> bool:
    return u.run("console_session.delete", token_sha256=token_sha256) > 0


def delete_user(u: UnitOfWork, user_name: str) -> int:
    """End every session of ``user_name``; how many there were."""
    return u.run("console_session.delete_user", user_name=user_name)


def of_user(u: UnitOfWork, user_name: str) -> int:
    """How many sessions ``user_name`` has (expired ones not yet purged included)."""
    return len(u.all("console_session.count_user", user_name=user_name))


def purge(u: UnitOfWork, now: float, idle_s: float) -> int:
    """Delete sessions past their absolute end or idle longer than ``idle_s``; how many."""
    return u.run("console_session.purge", now=now, idle_before=now - idle_s)
