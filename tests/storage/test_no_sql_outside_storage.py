"""Issue 12: every query careloop runs is a named statement in ``middleware/storage/``.

The check walks ``middleware/`` (except ``middleware/storage/``) with :mod:`ast` and reports
file:line for

* string literals (plain or f-strings) that read as SQL statements,
* ``sqlalchemy.text(...)`` / ``exec_driver_sql(...)`` calls and ``.execute(...)`` / ``.executemany(...)``
  given a literal string,
* SQLAlchemy / SQLModel statement builders (``select``, ``insert``, ``update``, ``delete``, ``text``,
  ...) and ORM sessions imported outside storage: an ORM or Core statement written in place is a
  query that is not in the registry either;
* ``engine.connect()`` / ``engine.begin()`` / ``engine.raw_connection()``: a connection opened
  outside the unit of work.

``PENDING`` names the modules still being converted (with why); it must shrink to empty, and an
entry whose module has become clean fails the test so the list cannot go stale.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "middleware"
STORAGE = PKG / "storage"

#: module (path relative to the repository) -> why it still holds SQL. Must become empty.
PENDING: dict[str, str] = {}

# -- what counts as SQL text ---------------------------------------------------------------
_IDENT = r'(?:"\w+"|\w+|\{[^}]*\})'  # a table or column name, quoted, plain, or an f-string field
_SQL_ANYWHERE = re.compile(
    "|".join((
        rf"\bSELECT\s+(?:DISTINCT\s+)?(?:.|\n)+?\s+FROM\s+{_IDENT}",
        r"\bSELECT\s+(?:1|\d+|count\(|min\(|max\(|sum\()",
        rf"\bINSERT\s+(?:OR\s+\w+\s+)?INTO\s+{_IDENT}",
        rf"\bUPDATE\s+{_IDENT}\s+SET\s",
        rf"\bDELETE\s+FROM\s+{_IDENT}",
        r"\b(?:CREATE|ALTER|DROP)\s+(?:UNIQUE\s+)?(?:TABLE|INDEX|TRIGGER|VIEW|DATABASE|SCHEMA|FUNCTION)\b",
        r"\bPRAGMA\s+\w+",
        r"\bBEGIN\s+(?:IMMEDIATE|EXCLUSIVE|DEFERRED|TRANSACTION)\b",
        r"^\s*VACUUM\b|\bVACUUM\s+INTO\s+(?:\?|'|:\w|%s|\{)",
        r"\bON\s+CONFLICT\s*\(",
        r"\bFOR\s+UPDATE\s+SKIP\s+LOCKED\b",
        r"\bWHERE\s+\w+(?:\.\w+)?\s*(?:=|<>|<=|>=|<|>|IN|LIKE|IS)\s*(?:\?|%s|:\w+|'|\(|NULL)",
    )),
)
#: lower-case SQL counts too, but only as a whole string that starts with a statement
_SQL_LOWER = re.compile(
    r"^\s*(?:select\s+[\w\s,.*()\"]+?\s+from\s+\"?\w+\"?(?:\s+(?:where|order|group|limit|join)\s|\s*$)"
    r"|insert\s+into\s+\"?\w+\"?\s*\(|update\s+\"?\w+\"?\s+set\s+\w+\s*=|delete\s+from\s+\"?\w+\"?(?:\s+where\s|\s*$)"
    r"|pragma\s+\w+|begin\s+immediate|select\s+1\s*$)",
    re.IGNORECASE | re.DOTALL,
)

#: statement builders: constructing a query in place is a query outside the registry
_BUILDERS = frozenset({
    "select", "insert", "update", "delete", "text", "bindparam", "literal_column", "exists", "union", "union_all",
    "func", "and_", "or_", "not_", "col", "case", "tuple_", "true", "false", "null", "distinct", "desc", "asc",
    "Session",  # an ORM session outside storage runs queries that are not in the registry
})
_SA_MODULES = ("sqlalchemy", "sqlmodel")


def _is_sql(s: str) -> bool:
    return bool(_SQL_ANYWHERE.search(s) or _SQL_LOWER.search(s))


def _string_of(node: ast.AST) -> str | None:
    """The text of a literal string expression (f-string fields become ``{}``), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else "{x}" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
        left, right = _string_of(node.left), _string_of(node.right)
        if left is not None or right is not None:
            return (left or "{x}") + (right or "{x}")
    return None


def _receiver(node: ast.AST) -> str:
    """``engine`` for ``engine``, ``self.rt.engine`` for that attribute chain, else ''."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _receiver(node.value)
        return f"{inner}.{node.attr}" if inner else node.attr
    return ""


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the docstring nodes (documentation may name SQL; code may not run it)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                out.add(id(first.value))
    return out


def violations(path: Path, root: Path = ROOT) -> list[str]:
    """``file:line: what`` for each piece of SQL in ``path``."""
    rel = path.relative_to(root).as_posix()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
    docs = _docstrings(tree)
    text_names: set[str] = set()  # local names bound to sqlalchemy.text
    sa_aliases: set[str] = set()  # local names bound to the sqlalchemy / sqlmodel modules
    found: list[tuple[int, str]] = []
    inner: set[int] = set()  # string parts already reported as part of a larger expression
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in _SA_MODULES:
            for a in node.names:
                if a.name in _BUILDERS:
                    found.append((node.lineno, f"imports the statement builder {node.module}.{a.name}"))
                if a.name == "text":
                    text_names.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in _SA_MODULES:
                    sa_aliases.add(a.asname or a.name.split(".")[0])
        elif isinstance(node, ast.Call):
            f = node.func
            arg = node.args[0] if node.args else None
            if isinstance(f, ast.Name) and f.id in text_names:
                found.append((node.lineno, "sqlalchemy.text(...)"))
            elif isinstance(f, ast.Attribute):
                if f.attr in _BUILDERS and isinstance(f.value, ast.Name) and f.value.id in sa_aliases:
                    found.append((node.lineno, f"{f.value.id}.{f.attr}(...)"))
                elif f.attr == "exec_driver_sql":
                    found.append((node.lineno, "exec_driver_sql(...)"))
                elif f.attr in ("connect", "begin", "raw_connection") and _receiver(f.value).lower().endswith("engine"):
                    found.append((node.lineno, f"{_receiver(f.value)}.{f.attr}(): a connection outside the unit of work"))
                elif f.attr in ("execute", "executemany", "executescript") and arg is not None:
                    s = _string_of(arg)
                    if s is not None:
                        found.append((node.lineno, f".{f.attr}() of literal SQL {s[:60]!r}"))
                        inner.update(id(n) for n in ast.walk(arg))
    for node in ast.walk(tree):
        if id(node) in docs or id(node) in inner:
            continue
        if isinstance(node, (ast.JoinedStr, ast.BinOp)):
            s = _string_of(node)
            if s is not None and _is_sql(s):
                found.append((node.lineno, f"SQL text {s[:60]!r}"))
                inner.update(id(n) for n in ast.walk(node) if n is not node)
    for node in ast.walk(tree):
        if id(node) in docs or id(node) in inner:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _is_sql(node.value):
            found.append((node.lineno, f"SQL text {node.value[:60]!r}"))
    return [f"{rel}:{line}: {what}" for line, what in sorted(set(found))]


def _modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if STORAGE not in p.parents)


def test_no_sql_outside_storage() -> None:
    bad = [v for p in _modules() if p.relative_to(ROOT).as_posix() not in PENDING for v in violations(p)]
    assert not bad, "SQL outside middleware/storage/ (make it a named query in storage/queries/):\n" + "\n".join(bad)


def test_pending_list_has_no_stale_entries() -> None:
    stale = [m for m in PENDING if not (ROOT / m).exists() or not violations(ROOT / m)]
    assert not stale, f"no SQL left in these modules: remove them from PENDING: {stale}"


# -- the detector itself ------------------------------------------------------------------
@pytest.mark.parametrize("src", [
    'q = "SELECT id, status FROM delivery WHERE id = ?"',
    'q = f"SELECT id FROM {table} WHERE {ts} < :cutoff"',
    'q = "UPDATE \\"trigger\\" SET status = \'cancelled\' WHERE id = ?"',
    'q = "INSERT INTO kv (key, value) VALUES (?, ?)"',
    'q = "DELETE FROM kv WHERE key = :k"',
    'conn.exec_driver_sql("PRAGMA synchronous=NORMAL")',
    'cur.execute("select 1")',
    'from sqlalchemy import text\nc.execute(text("anything"))',
    'from sqlmodel import select\nq = select(X)',
    'import sqlalchemy as sa\nq = sa.select(X)',
    'q = "status = ?" + " FOR UPDATE SKIP LOCKED"',
    'q = "CREATE TABLE t (a int)"',
    'q = "ON CONFLICT (key) DO NOTHING"',
    'with self.engine.begin() as c:\n    pass',
    'with engine.connect() as c:\n    pass',
])
def test_detector_finds_sql(tmp_path: Path, src: str) -> None:
    f = tmp_path / "m.py"
    f.write_text(src + "\n")
    assert _violations_at(f), src


@pytest.mark.parametrize("src", [
    'raise HookError(f"DELETE {w.ref} -> {r.status_code}: {r.text[:300]}")',
    'log.info("one UPDATE for the whole batch")',
    'def f():\n    """Runs ``SELECT id FROM delivery WHERE status = ?`` (documentation)."""',
    'm = "select a destination from the list"',
    'help = "Delete from the sandbox the resources it created"',
    'method = "DELETE"',
    'x = {"created": "select the rows"}',
    'sock.connect(addr)',
])
def test_detector_ignores_prose(tmp_path: Path, src: str) -> None:
    f = tmp_path / "m.py"
    f.write_text(src + "\n")
    assert not _violations_at(f), src


def _violations_at(path: Path) -> list[str]:
    return violations(path, path.parent)
