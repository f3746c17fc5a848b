"""Console test helpers: a users file with known passwords, and a signed-in TestClient per role.

TestClient talks to ``https://testserver`` so the console's ``Secure`` cookie is sent back."""
from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from middleware.console.users import User, hash_password, save
from middleware.service import Runtime
from middleware.settings import Settings

#: One user per role; the password is the user's name reversed plus a suffix (synthetic).
ROLE_USERS = {"ana": "analyst", "otto": "operator", "aud": "auditor", "root": "admin"}


def password_of(name: str) -> str:
    return name[::-1] + "-Pw-2026!"


def write_users(path: Path, extra: dict[str, tuple[str, ...]] | None = None) -> Path:
    """A users file with one user per role (``ROLE_USERS``) plus ``extra`` (name -> roles)."""
    users = {n: User(n, hash_password(password_of(n)), (r,)) for n, r in ROLE_USERS.items()}
    for n, roles in (extra or {}).items():
        users[n] = User(n, hash_password(password_of(n)), roles)
    save(path, users)
    return path


def console_runtime(db_url: str, mappings: Path, users_file: Path, **settings: object) -> Runtime:
    return Runtime(Settings(database_url=db_url, mappings_dir=mappings, console_users_file=users_file, **settings))  # type: ignore[arg-type]


def client(rt: Runtime) -> TestClient:
    return TestClient(rt.http_app(), base_url="https://testserver", follow_redirects=False)


def sign_in(c: TestClient, name: str, password: str | None = None) -> str:
    """Sign ``c`` in as ``name``; return the session's CSRF token (read from the page)."""
    r = c.post("/signin", data={"username": name, "password": password or password_of(name)})
    assert r.status_code == 303, r.text
    page = c.get("/")
    assert page.status_code == 200, page.text
    m = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert m, "no CSRF token on the page"
    return m.group(1)
