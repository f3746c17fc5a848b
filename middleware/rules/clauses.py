# mypy: disable-error-code="no-untyped-call"
"""Why a ``where`` is false: each top-level clause with its value and the %variables it used.

``careloop explain`` turns this on (:data:`EXPLAIN_CLAUSES`); the running pipeline does not
pay for it. For ``class.code = 'IMP' and %age >= 6`` on a 4-year-old's inpatient stay::

    where is false: class.code = 'IMP' and %age >= 6
      [true ] class.code = 'IMP'
      [false] %age >= 6    (%age = 4)
"""
from __future__ import annotations

import re
from contextvars import ContextVar
from typing import Any, Callable

from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser as P

from .check import parse
from .fhirpath import Compiled, first_value, truthy
from .load import RuleSet, _compiler

#: set to True (``careloop explain``) to break a false ``where`` into its clauses
EXPLAIN_CLAUSES: ContextVar[bool] = ContextVar("careloop_explain_clauses", default=False)
_VAR = re.compile(r"%([A-Za-z_]\w*)((?:\.[A-Za-z_]\w*(?![\w(]))*)")
_cache: dict[tuple[str, int], tuple[str | None, list[tuple[str, Compiled]]]] = {}


def split_clauses(expr: str) -> tuple[str | None, list[str]]:
    """(operator, clause texts) of the top-level ``and`` / ``or`` chain; (None, [expr]) otherwise."""
    tree = parse(expr)
    if tree is None:
        return None, [expr.strip()]
    top = tree
    while isinstance(top, P.TermExpressionContext) and isinstance(top.term(), P.ParenthesizedTermContext):
        top = top.term().expression()
    kinds = {P.AndExpressionContext: "and", P.OrExpressionContext: "or"}
    op = next((v for k, v in kinds.items() if isinstance(top, k)), None)
    if op is None or top.getChild(1).getText() != op:
        return None, [expr.strip()]
    parts: list[Any] = []

    def flatten(node: Any) -> None:
        if isinstance(node, type(top)) and node.getChild(1).getText() == op:
            flatten(node.expression(0))
            flatten(node.expression(1))
        else:
            parts.append(node)

    flatten(top)
    return op, [" ".join(expr[p.start.start:p.stop.stop + 1].split()) for p in parts]


def _show(v: Any) -> str:
    if isinstance(v, list):
        if not v:
            return "empty"
        return _show(v[0]) if len(v) == 1 else "[" + ", ".join(_show(x) for x in v[:5]) + (", ..." if len(v) > 5 else "") + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        codes = [f"{c.get('system', '')}|{c.get('code', '')}" for c in v.get("coding") or [] if isinstance(c, dict)]
        if "code" in v and "coding" not in v:
            codes = [f"{v.get('system', '')}|{v['code']}"]
        return " ".join(codes) if codes else "{...}"
    val = first_value([v])
    return repr(val) if isinstance(val, str) else str(val)


def _lookup(env: dict[str, Any], name: str, path: str) -> Any:
    v: Any = env.get(name)
    for part in [p for p in path.split(".") if p]:
        if isinstance(v, list):
            v = [x.get(part) for x in v if isinstance(x, dict) and x.get(part) is not None]
        elif isinstance(v, dict):
            v = v.get(part)
        else:
            return None
    return v


def explain_where(expr: str, resource: dict[str, Any], env: dict[str, Any], rs: RuleSet) -> list[str]:
    """One line per top-level clause: ``[true ] text (%age = 4)``."""
    key = (expr, id(rs))
    if key not in _cache:
        compiler: Callable[[str], Compiled] = _compiler(rs.valuesets, rs.settings)
        op, texts = split_clauses(expr)
        _cache[key] = (op, [(t, compiler(t)) for t in texts])
    op, clauses = _cache[key]
    lines = []
    for text, fn in clauses:
        try:
            result = fn(resource, env)
            mark = "true " if truthy(result) else "false"
            value = "" if (len(result) == 1 and isinstance(result[0], bool)) else f" = {_show(result)}"
        except Exception as exc:  # noqa: BLE001 - shown to the analyst
            mark, value = "error", f" ({exc})"
        used = []
        for m in _VAR.finditer(text):
            shown = _lookup(env, m.group(1), m.group(2))
            if shown is None or (isinstance(shown, dict) and _show(shown) == "{...}"):
                continue
            if isinstance(shown, list) and any(isinstance(x, dict) and _show(x) == "{...}" for x in shown):
                continue
            used.append(f"%{m.group(1)}{m.group(2)} = {_show(shown)}")
        extra = f"    ({', '.join(dict.fromkeys(used))})" if used else ""
        lines.append(f"  [{mark}] {text}{value}{extra}")
    if op is not None:
        lines.insert(0, f"clauses joined by '{op}':")
    return lines
