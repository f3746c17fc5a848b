"""Console users from a file (``CARELOOP_CONSOLE_USERS_FILE``, YAML)::

    users:
      - name: dana
        password: "$argon2id$v=19$m=65536,t=3,p=4$..."   # argon2id hash; never a plain password
        roles: [operator]
        permissions: [export.lds]                         # optional extra grants

Passwords are hashed and checked with argon2-cffi (argon2id, its default parameters); a hash made
with older parameters is re-hashed on the next successful sign-in.
"""
from __future__ import annotations

import functools
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from .access import ROLES

HASHER = PasswordHasher()


@functools.cache
def _dummy() -> str:
    """Verified against when the user does not exist, so a wrong name costs as long as a wrong
    password. Made on first use, not at import (one argon2 hash: 0.2 s of ``careloop serve``'s start)."""
    return HASHER.hash("careloop-no-such-user")


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str
    roles: tuple[str, ...]
    permissions: tuple[str, ...] = ()


class UsersFileError(ValueError):
    """The users file cannot be read; the message names the file and the entry."""


def load(path: Path) -> dict[str, User]:
    """Users by name; an absent file is no users. Raises UsersFileError naming the problem."""
    if not path.exists():
        return {}
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise UsersFileError(f"{path}{line}: not valid YAML") from None
    entries = doc.get("users") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise UsersFileError(f"{path}: expected a 'users:' list")
    users: dict[str, User] = {}
    for i, e in enumerate(entries, 1):
        if not isinstance(e, dict) or not isinstance(e.get("name"), str) or not isinstance(e.get("password"), str):
            raise UsersFileError(f"{path}: users entry {i} needs 'name' and 'password' (an argon2 hash)")
        roles = tuple(str(r) for r in (e.get("roles") or []))
        unknown = [r for r in roles if r not in ROLES]
        if unknown:
            raise UsersFileError(f"{path}: user {e['name']!r}: unknown role {unknown[0]!r} (one of {', '.join(ROLES)})")
        if not str(e["password"]).startswith("$argon2"):
            raise UsersFileError(f"{path}: user {e['name']!r}: 'password' must be an argon2 hash (careloop users passwd)")
        users[e["name"]] = User(e["name"], e["password"], roles, tuple(str(p) for p in (e.get("permissions") or [])))
    return users


def save(path: Path, users: dict[str, User]) -> None:
    """Write the users file (mode 0600), replacing it atomically."""
    doc: dict[str, Any] = {"users": [
        {"name": u.name, "password": u.password_hash, "roles": list(u.roles),
         **({"permissions": list(u.permissions)} if u.permissions else {})}
        for u in sorted(users.values(), key=lambda u: u.name)]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    tmp.chmod(0o600)
    tmp.replace(path)


def verify(users: dict[str, User], name: str, password: str) -> User | None:
    """The user when ``password`` is theirs, else None (constant work whether or not the name exists)."""
    dummy = _dummy()  # made (once) whether or not the name exists
    user = users.get(name)
    try:
        HASHER.verify(user.password_hash if user else dummy, password)
    except (VerificationError, InvalidHashError):
        return None
    return user


def hash_password(password: str) -> str:
    return HASHER.hash(password)


#: The first-run admin's password file, beside the users file (mode 0600; the password never goes to a log).
ADMIN_PASSWORD_FILE = "console-admin-password"
FIRST_ADMIN = "admin"


def admin_password_file(users_file: Path) -> Path:
    return users_file.parent / ADMIN_PASSWORD_FILE


def new_password() -> str:
    """A random password (24 URL-safe characters, 144 bits)."""
    return secrets.token_urlsafe(18)


def create_first_admin(users_file: Path) -> Path | None:
    """When ``users_file`` does not exist: create it with user ``admin`` (role admin) and a random
    password written to :func:`admin_password_file` (mode 0600); that file's path. Else None."""
    if users_file.exists():
        return None
    password = new_password()
    pw_file = admin_password_file(users_file)
    pw_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(password + "\n")
    save(users_file, {FIRST_ADMIN: User(FIRST_ADMIN, hash_password(password), ("admin",))})
    return pw_file
