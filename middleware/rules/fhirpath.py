"""FHIRPath for rules: syntax checking with positions, compilation, ``memberOf``.

fhirpathpy's own ``parse`` recovers silently from syntax errors, so expressions are
checked first with the same ANTLR grammar and an error listener that collects them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable
from zoneinfo import ZoneInfo

import fhirpathpy
from antlr4 import CommonTokenStream, InputStream, Token
from antlr4.error.ErrorListener import ErrorListener
from antlr4.tree.Tree import ParseTreeWalker
from fhirpathpy.engine.util import set_paths
from fhirpathpy.models import models
from fhirpathpy.parser.ASTPathListener import ASTPathListener
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

R4 = models["r4"]


@dataclass(frozen=True)
class SyntaxProblem:
    column: int  # 1-based, within the expression's line
    message: str
    offset: int = 0  # 0-based character offset within the whole expression


_EXPECTING = re.compile(r" expecting (\{[^}]*\}|\S+)$")


def _plain(msg: str, expr: str, offset: int) -> str:
    """ANTLR's messages, said plainly: no token sets, no <EOF>."""
    if msg.startswith("token recognition error at: "):
        bad = msg[len("token recognition error at: ") + 1:-1]
        if bad.startswith("'"):
            return "unterminated string (a quote ' is not closed)"
        if bad.startswith("$"):
            return f"unknown symbol '{bad}' (only $this, $index, $total exist)"
        return f"unexpected character '{bad[:1]}'"
    if expr[offset:offset + 1] == "=" and expr[offset - 1:offset] == "=":
        return "'==' is not FHIRPath: equality is a single '='"
    m = _EXPECTING.search(msg)
    if m:
        want = m.group(1)
        msg = msg[:m.start()]
        if want.startswith("{") and want.count(",") > 4:
            msg += " where an expression should be" if "'('" in want else " where a name should be"
        else:
            msg += f" (expected {want})"
    msg = msg.replace("mismatched input '<EOF>'", "the expression ends").replace("at '<EOF>'", "at the end")
    return msg.replace("extraneous input", "unexpected").replace("mismatched input", "unexpected")


class _Collect(ErrorListener):  # type: ignore[misc]
    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.problems: list[SyntaxProblem] = []

    def syntaxError(self, recognizer: Any, offendingSymbol: Any, line: int, column: int, msg: str, e: Any) -> None:
        lines = self.expr.split("\n")
        offset = sum(len(x) + 1 for x in lines[:line - 1]) + column
        if offendingSymbol is not None and getattr(offendingSymbol, "start", -1) >= 0:
            offset = min(offendingSymbol.start, len(self.expr))
        if offendingSymbol is not None and offendingSymbol.type == Token.EOF:
            offset = len(self.expr.rstrip())  # just after the last character written
        self.problems.append(SyntaxProblem(column + 1, _plain(msg, self.expr, offset), offset))


def check_syntax(expr: str) -> list[SyntaxProblem]:
    """Return syntax problems of a FHIRPath expression (empty when it parses whole)."""
    return list(parse_tree(expr)[1])


@lru_cache(maxsize=4096)
def parse_tree(expr: str) -> tuple[Any, tuple[SyntaxProblem, ...]]:
    """(ANTLR expression tree or None, syntax problems); cached, as rule files repeat
    expressions and the Python ANTLR runtime takes about a millisecond for each."""
    listener = _Collect(expr)
    lexer = FHIRPathLexer(InputStream(expr))
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    stream = CommonTokenStream(lexer)
    parser = FHIRPathParser(stream)
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    tree = None
    try:
        tree = parser.expression()
    except Exception as exc:  # lexer errors raise
        listener.problems.append(SyntaxProblem(1, str(exc) or type(exc).__name__))
    if not listener.problems:
        tok = stream.LT(1)
        if tok is not None and tok.type != Token.EOF:
            listener.problems.append(SyntaxProblem(tok.column + 1, f"unexpected '{tok.text}' after the expression "
                                                   "(a missing operator such as 'and'?)", tok.start))
    problems = tuple(listener.problems[:1])
    return (None if problems else tree), problems


class ValueSets:
    """Code lists by name: ``{"name": {"system|code", "|code"}}`` for ``memberOf('name')``."""

    def __init__(self, sets: dict[str, set[str]] | None = None) -> None:
        self.sets = sets or {}

    def member(self, coding: Any, name: str) -> bool:
        codes = self.sets.get(name)
        if codes is None:
            return False
        items = coding if isinstance(coding, list) else [coding]
        for it in items:
            if isinstance(it, dict):
                if "coding" in it:
                    if self.member(it["coding"], name):
                        return True
                    continue
                sys_, code = it.get("system", ""), it.get("code", "")
                if f"{sys_}|{code}" in codes or f"|{code}" in codes or code in codes:
                    return True
            elif isinstance(it, str) and (it in codes or f"|{it}" in codes):
                return True
        return False


Compiled = Callable[[Any, dict[str, Any]], list[Any]]


def _as_text(v: Any) -> str:
    if isinstance(v, str):
        return v
    to = getattr(v, "toString", None)
    return str(to()) if callable(to) else str(v)


_NAME = r"[A-Za-z][A-Za-z0-9_]*"
_SEGMENT = re.compile(rf"where\(\s*({_NAME})\s*=\s*'([^'\\]*)'\s*\)|({_NAME})")
_TAIL = re.compile(r"\.(first|exists)\(\)\s*$")
_MEMBER_OF = re.compile(r"\.memberOf\(\s*'([^'\\]*)'\s*\)\s*$")
_AND = re.compile(r"\s+and\s+")
_STRING = re.compile(r"^\s*'([^'\\]*)'\s*$")
_KEYWORDS = frozenset({"true", "false", "and", "or", "xor", "implies", "is", "as", "div", "mod", "in", "contains", "where"})
#: base names of choice elements (``value[x]`` is written ``valueString``...): resolving them needs the model
_CHOICE = frozenset(p.rsplit(".", 1)[-1] for p in R4["choiceTypePaths"])


class _NeedsModel(Exception):
    pass


#: one step of a plain path: a member name, or ``where(name = 'text')`` as (name, text)
_Step = str | tuple[str, str]


def _steps(path: str) -> list[_Step] | None:
    """``a.b.where(c = 'x').d`` as its steps; None when it is anything else."""
    steps: list[_Step] = []
    pos = 0
    while True:
        m = _SEGMENT.match(path, pos)
        if not m:
            return None
        if m.group(3) is not None:
            if m.group(3) in _KEYWORDS:
                return None
            steps.append(m.group(3))
        else:
            if m.group(1) in _KEYWORDS or not _plain_text(m.group(2)):
                return None
            steps.append((m.group(1), m.group(2)))
        pos = m.end()
        if pos == len(path):
            return steps
        if path[pos] != ".":
            return None
        pos += 1


def _plain_text(text: str) -> bool:
    """A literal compared with ``=`` that no FHIR date, time or number could equal in fhirpathpy's eyes."""
    return bool(text) and not text[0].isdigit() and text[0] not in "T@+-"


def _member(n: Any, name: str, out: list[Any]) -> None:
    """Append ``n.name`` (flattened, nulls dropped) to ``out``; a choice element written with its
    type suffix raises :class:`_NeedsModel`."""
    if not isinstance(n, dict):
        return
    v = n.get(name)
    if isinstance(v, list):
        out.extend(x for x in v if x is not None)
    elif v is not None:
        out.append(v)
    elif name in _CHOICE and any(k.startswith(name) and k[len(name):len(name) + 1].isupper() for k in n):
        raise _NeedsModel


def _walker(expr: str) -> tuple[Callable[[Any], list[Any]], str | None] | None:
    """(nodes of a plain path, its ``first``/``exists`` tail) or None."""
    body = expr.strip()
    tm = _TAIL.search(body)
    tail = tm.group(1) if tm else None
    if tm:
        body = body[:tm.start()]
    steps = _steps(body)
    if not steps:
        return None
    first = steps[0]
    type_name = first if isinstance(first, str) and first[0].isupper() else None
    if type_name is not None:
        steps.pop(0)

    def walk(resource: Any) -> list[Any]:
        if type_name is not None and (not isinstance(resource, dict) or resource.get("resourceType") != type_name):
            return []
        nodes = [resource]
        for step in steps:
            nxt: list[Any] = []
            if isinstance(step, str):
                for n in nodes:
                    _member(n, step, nxt)
            else:  # where(name = 'text'): string equality, one value each; anything else needs fhirpathpy
                name, text = step
                for n in nodes:
                    got: list[Any] = []
                    _member(n, name, got)
                    if not got:
                        continue
                    if len(got) != 1 or not isinstance(got[0], str) or not _plain_text(got[0]) or isinstance(n.get(name), list):
                        raise _NeedsModel
                    if got[0] == text:
                        nxt.append(n)
            nodes = nxt
        return nodes

    return walk, tail


def plain_path(expr: str, slow: Callable[[], Compiled] | None = None, valuesets: ValueSets | None = None) -> Compiled | None:
    """A direct evaluator for the expressions most mappings are made of: a string literal;
    a member path (``start``, ``Appointment.serviceType.coding.display``), possibly filtered
    by ``where(name = 'text')`` (``participant.actor.where(type = 'Location').display``), and
    optionally ending in ``.first()``, ``.exists()`` or ``.memberOf('valueset')``; and
    ``and`` of such boolean expressions. The result equals fhirpathpy's (tests compare them
    on every shipped expression); anything else returns ``None`` and goes to fhirpathpy,
    whose tree walk costs ~25 µs even for ``start`` and ~200 µs with a ``where``. Data the
    direct walk cannot judge exactly (a choice element written with its type suffix, a
    ``where`` on a non-text or date-like value, an ``and`` operand that is not a boolean)
    is handed to ``slow`` (fhirpathpy)."""
    lit = _STRING.match(expr)
    if lit:
        value = [lit.group(1)]
        return lambda resource, env: list(value)
    fallback: list[Compiled] = []

    def slower(resource: Any, env: dict[str, Any]) -> list[Any]:
        if slow is None:
            raise ValueError(f"{expr}: needs the FHIR model") from None
        if not fallback:
            fallback.append(slow())
        return fallback[0](resource, env)

    if _AND.search(expr):  # a split inside a literal leaves a part with one quote: not an operand
        operands = [_operand(p, valuesets) for p in _AND.split(expr)]
        if any(o is None for o in operands):
            return None
        ops = [o for o in operands if o is not None]

        def both(resource: Any, env: dict[str, Any]) -> list[Any]:
            try:
                vals = [o(resource) for o in ops]
            except _NeedsModel:
                return slower(resource, env)
            acc: bool | None = vals[0]
            for v in vals[1:]:  # FHIRPath three-valued and, left to right as fhirpathpy folds it
                acc = False if (acc is False or v is False) else (None if (acc is None or v is None) else True)
            return [] if acc is None else [acc]

        return both
    found = _walker(expr)
    if found is None:
        return None
    walk, tail = found

    def run(resource: Any, env: dict[str, Any]) -> list[Any]:
        try:
            nodes = walk(resource)
        except _NeedsModel:
            return slower(resource, env)
        if tail == "exists":
            return [bool(nodes)]
        if tail == "first":
            return nodes[:1]
        return nodes

    return run


def _operand(expr: str, valuesets: ValueSets | None) -> Callable[[Any], bool | None] | None:
    """An ``and`` operand as a boolean (None for empty): ``path.exists()`` or ``path.memberOf('vs')``."""
    mo = _MEMBER_OF.search(expr)
    if mo:
        found = _walker(expr[:mo.start()])
        if found is None or found[1] is not None:
            return None
        walk, name = found[0], mo.group(1)
        vs = valuesets or ValueSets()

        def member(resource: Any) -> bool | None:
            nodes = walk(resource)
            return any(vs.member(i, name) for i in nodes) if nodes else None

        return member
    found = _walker(expr)
    if found is None or found[1] != "exists":
        return None
    walk_e = found[0]
    return lambda resource: bool(walk_e(resource))


def compile_expr(expr: str, valuesets: ValueSets | None = None, calendar: Any = None, zone: str = "UTC") -> Compiled:
    """Compile an expression (check it with :func:`check_syntax` first).

    Adds ``memberOf('valueset')``; ``plusBusinessDays(n)`` and ``plusDays(n)`` (a
    dateTime moved ``n`` business / calendar days in ``zone``, same local time, ISO text
    with its offset: FHIRPath's own ``+ 7 days`` drops the offset in fhirpathpy); and
    ``localDate()`` (the YYYY-MM-DD a dateTime was written with, for same-day tests).
    """
    fast = plain_path(expr, lambda: _compile(expr, valuesets, calendar, zone), valuesets)
    return fast if fast is not None else _compile(expr, valuesets, calendar, zone)


def _compile(expr: str, valuesets: ValueSets | None, calendar: Any, zone: str) -> Compiled:
    vs = valuesets or ValueSets()

    def member_of(inputs: list[Any], name: str) -> list[bool]:
        return [any(vs.member(i, name) for i in inputs)] if inputs else []

    def plus_business_days(inputs: list[Any], n: int) -> list[str]:
        from .timing import Calendar, add_business_days, parse_fhir_datetime

        cal = calendar or Calendar()
        out = []
        for i in inputs:
            dt = parse_fhir_datetime(_as_text(i), zone)
            if dt is not None:
                out.append(add_business_days(dt, int(n), cal, zone).isoformat())
        return out

    def plus_days(inputs: list[Any], n: int) -> list[str]:
        from .timing import add_duration, parse_fhir_datetime

        out = []
        for i in inputs:
            dt = parse_fhir_datetime(_as_text(i), zone)
            if dt is not None:
                local = dt.astimezone(ZoneInfo(zone))
                out.append(add_duration(local, f"{abs(int(n))}d", calendar, zone, 1 if n >= 0 else -1).isoformat())
        return out

    def local_date(inputs: list[Any]) -> list[str]:
        return [_as_text(i)[:10] for i in inputs if len(_as_text(i)) >= 10]

    table = {
        "memberOf": {"fn": member_of, "arity": {1: ["String"]}},
        "plusBusinessDays": {"fn": plus_business_days, "arity": {1: ["Integer"]}},
        "plusDays": {"fn": plus_days, "arity": {1: ["Integer"]}},
        "localDate": {"fn": local_date, "arity": {0: []}},
    }
    ast = _ast(expr)
    if ast is None:
        return fhirpathpy.compile(expr, R4, options={"userInvocationTable": table})
    return set_paths(fhirpathpy.apply_parsed_path, parsedPath=ast, model=R4, options={"userInvocationTable": table})  # type: ignore[no-untyped-call]


@lru_cache(maxsize=4096)
def _ast(expr: str) -> Any:
    """fhirpathpy's syntax tree of ``expr``, built from :func:`parse_tree`'s (cached) ANTLR tree,
    as ``fhirpathpy.compile`` builds it from a parse of its own: one ANTLR parse per expression
    instead of two (the syntax check's and the compiler's: a quarter of loading the rule set).
    ``None`` (then fhirpathpy parses, and reports) when the expression has syntax problems."""
    tree, problems = parse_tree(expr)
    if tree is None or problems:
        return None
    listener = ASTPathListener()  # type: ignore[no-untyped-call]
    ParseTreeWalker().walk(listener, tree)
    return listener.parentStack[0]


def truthy(result: list[Any]) -> bool:
    """FHIRPath boolean evaluation of a collection: empty -> false; single boolean -> it."""
    if not result:
        return False
    if len(result) == 1 and isinstance(result[0], bool):
        return result[0]
    return True


def first_value(result: list[Any]) -> Any:
    if not result:
        return None
    v = result[0]
    if isinstance(v, (str, int, float, bool, dict, list)):
        return v
    if callable(getattr(v, "toString", None)):  # FHIRPath date/time/quantity values
        return str(v.toString())
    return getattr(v, "data", v)
