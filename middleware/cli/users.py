"""``careloop users add NAME --role R [--permission P] | passwd NAME | remove NAME | list``: the
console's users file (``CARELOOP_CONSOLE_USERS_FILE``; argon2 hashes, never a plain password).

A password is read from a prompt (twice, not echoed) or, with ``--password-stdin``, from the first
line of standard input (scripts). Changing a user's password or removing the user ends their
console sessions at once (every replica: sessions are in the database). Every command is written
to the admin audit (channel ``cli``, actor the OS user), never with the password.
"""
from __future__ import annotations

import argparse
import getpass
import re
import sys
from pathlib import Path

from . import UserError
from .serve import add_common, open_data, settings_from

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")
MIN_PASSWORD = 12


def _users_file(args: argparse.Namespace) -> Path:
    if args.users_file is not None:
        return Path(args.users_file)
    path: Path = settings_from(args).console_users_file
    return path


def _password(args: argparse.Namespace, name: str) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != password:
            raise UserError("the two passwords differ")
    if len(password) < MIN_PASSWORD:
        raise UserError(f"a password needs at least {MIN_PASSWORD} characters")
    return password


def _load(path: Path) -> dict[str, object]:
    from ..console.users import UsersFileError, load

    try:
        return dict(load(path))
    except UsersFileError as exc:
        raise UserError(str(exc)) from None


def _audit(args: argparse.Namespace, action: str, name: str | None, detail: dict[str, object] | None = None) -> object:
    from ..delivery.admin_audit import cli_actor, record

    engine = open_data(settings_from(args))
    record(engine, actor=cli_actor(), channel="cli", action=action, target_kind="user" if name else None, target_id=name,
           detail=detail)
    return engine


def cmd_add(args: argparse.Namespace) -> int:
    from ..config.roles import ALL_PERMISSIONS, ROLES
    from ..console.users import User, hash_password, save

    if not NAME.match(args.name):
        raise UserError("a user name is 1-100 letters, digits, '.', '_', '@' or '-', starting with a letter or digit")
    bad = [r for r in args.role if r not in ROLES] + [p for p in args.permission if p not in ALL_PERMISSIONS]
    if bad:
        raise UserError(f"unknown role or permission {bad[0]!r} (roles: {', '.join(ROLES)}; permissions: "
                        f"{', '.join(sorted(ALL_PERMISSIONS))})")
    path = _users_file(args)
    users = _load(path)
    if args.name in users:
        raise UserError(f"user {args.name!r} exists (careloop users passwd / remove)")
    open_data(settings_from(args))  # the audit needs the database: fail before asking for a password
    password = _password(args, args.name)
    users[args.name] = User(args.name, hash_password(password), tuple(dict.fromkeys(args.role)),
                            tuple(dict.fromkeys(args.permission)))
    save(path, users)  # type: ignore[arg-type]
    _audit(args, "users.add", args.name, {"roles": args.role, "permissions": args.permission})
    print(f"user {args.name} added ({', '.join(args.role)}) to {path}")
    return 0


def cmd_passwd(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..console.sessions import end_user_sessions
    from ..console.users import User, admin_password_file, hash_password, save

    path = _users_file(args)
    users = _load(path)
    user = users.get(args.name)
    if not isinstance(user, User):
        raise UserError(f"no user {args.name!r} in {path}")
    engine = open_data(settings_from(args))
    password = _password(args, args.name)
    users[args.name] = replace(user, password_hash=hash_password(password))
    save(path, users)  # type: ignore[arg-type]
    ended = end_user_sessions(engine, args.name)
    first = admin_password_file(path)
    if args.name == "admin" and first.exists():
        first.unlink()  # the first-run password no longer opens anything
    _audit(args, "users.passwd", args.name, {"sessions_ended": ended})
    print(f"password of {args.name} changed; {ended} console session(s) ended")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from ..console.sessions import end_user_sessions
    from ..console.users import save

    path = _users_file(args)
    users = _load(path)
    if args.name not in users:
        raise UserError(f"no user {args.name!r} in {path}")
    engine = open_data(settings_from(args))
    del users[args.name]
    save(path, users)  # type: ignore[arg-type]
    ended = end_user_sessions(engine, args.name)
    _audit(args, "users.remove", args.name, {"sessions_ended": ended})
    print(f"user {args.name} removed; {ended} console session(s) ended")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from ..console.users import User

    path = _users_file(args)
    users = _load(path)
    _audit(args, "users.list", None)
    for name in sorted(users):
        u = users[name]
        assert isinstance(u, User)
        extra = f"  +{','.join(u.permissions)}" if u.permissions else ""
        print(f"{name:<24} {','.join(u.roles) or '-'}{extra}")
    if not users:
        print(f"no users in {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("users", help="console users: add, passwd, remove, list (argon2 hashes; audited)")
    usub = p.add_subparsers(dest="users_command", metavar="ACTION", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--users-file", type=Path, help="the users file [CARELOOP_CONSOLE_USERS_FILE]")
        add_common(sp)

    pa = usub.add_parser("add", help="add a user with roles (and extra permissions)")
    pa.add_argument("name")
    pa.add_argument("--role", action="append", required=True, help="analyst, operator, auditor or admin (repeatable)")
    pa.add_argument("--permission", action="append", default=[], help="an extra permission, e.g. export.lds (repeatable)")
    pa.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    common(pa)
    pa.set_defaults(func=cmd_add)
    pp = usub.add_parser("passwd", help="set a user's password (ends their console sessions)")
    pp.add_argument("name")
    pp.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    common(pp)
    pp.set_defaults(func=cmd_passwd)
    pr = usub.add_parser("remove", help="remove a user (ends their console sessions)")
    pr.add_argument("name")
    common(pr)
    pr.set_defaults(func=cmd_remove)
    pl = usub.add_parser("list", help="users with their roles and extra permissions")
    common(pl)
    pl.set_defaults(func=cmd_list)
