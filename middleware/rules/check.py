# mypy: disable-error-code="no-untyped-call"
"""Type-check rule FHIRPath against the FHIR R4 definitions (fhirpathpy's bundled R4 model).

Every member access (``class.code``, ``hospitalization.dischargeDisposition``) is
resolved against the type of what it is applied to: the resource in context (from the
rule's ``on`` events), a ``%variable`` (typed, see :func:`variable_types`), or the result
of the previous step. A name the type does not have is a problem at its offset in the
expression, with the closest name the type does have::

    check_expression("class.cod = 'IMP'", ["Encounter"])
    -> [Problem(offset=6, code="unknown-element",
                message="Coding has no element 'cod' (did you mean 'code'?)")]

Choice elements resolve as FHIRPath does: ``scheduled`` is Timing | Period | string,
``scheduledPeriod`` is Period; ``ofType(Period)`` / ``as Period`` narrow. Backbone
elements (``Encounter.hospitalization``) are their own types. An unknown function is a
problem too (fhirpathpy would fail at run time). Where the type cannot be known
(``resolve``-like functions, untyped variables, ``children()``) checking stops quietly:
the checker reports only what is certainly wrong.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fhirpathpy.engine.invocations import invocation_registry
from fhirpathpy.models import models
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser as P

from .fhirpath import parse_tree

R4 = models["r4"]
PRIMITIVES = frozenset({
    "boolean", "integer", "string", "decimal", "uri", "url", "canonical", "base64Binary", "instant", "date",
    "dateTime", "time", "code", "oid", "id", "markdown", "unsignedInt", "positiveInt", "uuid", "xhtml",
    "System.String", "System.Boolean", "System.Integer", "System.Decimal", "System.Date", "System.DateTime",
    "System.Time", "Quantity-literal",
})
#: functions careloop adds (middleware/rules/fhirpath.py) -> result type ("input": same as input)
EXTRA_FUNCTIONS: dict[str, str] = {"memberOf": "boolean", "plusDays": "dateTime", "plusBusinessDays": "dateTime",
                                   "localDate": "string"}
_BOOLEAN_FUNCTIONS = frozenset({
    "empty", "not", "exists", "all", "allTrue", "anyTrue", "allFalse", "anyFalse", "subsetOf", "supersetOf",
    "isDistinct", "startsWith", "endsWith", "contains", "matches", "is", "toBoolean",
    "convertsToBoolean", "convertsToInteger", "convertsToDecimal", "convertsToString", "convertsToDate",
    "convertsToDateTime", "convertsToTime", "convertsToQuantity",
})
_SAME_AS_INPUT = frozenset({"where", "first", "last", "tail", "single", "distinct", "skip", "take", "trace",
                            "intersect", "exclude"})
_RESULT = {
    "count": "integer", "length": "integer", "indexOf": "integer", "toInteger": "integer",
    "toString": "string", "upper": "string", "lower": "string", "replace": "string", "substring": "string",
    "trim": "string", "join": "string", "encode": "string", "decode": "string", "replaceMatches": "string",
    "split": "string", "toChars": "string", "toDecimal": "decimal", "toDate": "date", "toDateTime": "dateTime",
    "toTime": "time", "now": "dateTime", "today": "date", "timeOfDay": "time", "toQuantity": "Quantity",
    "abs": "decimal", "ceiling": "integer", "exp": "decimal", "floor": "integer", "ln": "decimal", "log": "decimal",
    "power": "decimal", "round": "decimal", "sqrt": "decimal", "truncate": "integer", "avg": "decimal",
    "sum": "decimal", "min": "decimal", "max": "decimal", "extension": "Extension",
}
_ITERATING = frozenset({"where", "select", "all", "exists", "repeat", "aggregate"})

#: a type: a set of names, each a FHIR type (``Coding``), a primitive (``code``), a backbone
#: element path (``Encounter.hospitalization``) or an object (``obj:event``); None: unknown
Ty = frozenset[str] | None


@dataclass(frozen=True)
class Problem:
    offset: int  # 0-based, within the expression
    code: str  # "unknown-element" | "unknown-function" | "unknown-type"
    message: str


@dataclass(frozen=True)
class Variable:
    type: str  # a FHIR type, primitive, backbone path, "obj:<name>" or "?" (unknown)
    meaning: str

    def describe(self) -> str:
        """``Patient``, ``integer``, ``{type, previousStatus, status}``."""
        if self.type.startswith("obj:"):
            return self.meaning if self.meaning.startswith("{") else "fields"
        return "any" if self.type == "?" else _label(self.type)


def _choice_type(name: str) -> str:
    low = name[0].lower() + name[1:]
    return low if low in PRIMITIVES else name


@lru_cache(maxsize=1)
def _children() -> dict[str, dict[str, str | tuple[str, ...]]]:
    """parent (type or backbone path) -> {element name: type or (choice types...)}."""
    out: dict[str, dict[str, str | tuple[str, ...]]] = {}
    for path, typ in R4["path2Type"].items():
        parts = path.split(".")
        for i in range(1, len(parts) - 1):  # backbone elements on the way
            parent, name = ".".join(parts[:i]), parts[i]
            out.setdefault(parent, {}).setdefault(name, ".".join(parts[:i + 1]))
        parent, name = path.rsplit(".", 1)
        out.setdefault(parent, {})[name] = typ
    for path, types in R4["choiceTypePaths"].items():
        parent, name = path.rsplit(".", 1)
        out.setdefault(parent, {})[name] = tuple(_choice_type(t) for t in types)
    return out


def members(typ: str) -> dict[str, str | tuple[str, ...]]:
    """Element names of one type with their types (inherited ones included)."""
    kids = _children()
    out: dict[str, str | tuple[str, ...]] = {}
    cur: str | None = R4["pathsDefinedElsewhere"].get(typ, typ)
    while cur:
        for k, v in kids.get(cur, {}).items():
            out.setdefault(k, v)
        cur = R4["type2Parent"].get(cur)
    if typ in PRIMITIVES:
        out = {"extension": "Extension", "id": "string"}
    return out


def is_type_name(name: str) -> bool:
    return name in R4["type2Parent"] or name in PRIMITIVES


def _resolve(t: str | tuple[str, ...]) -> frozenset[str]:
    items = t if isinstance(t, tuple) else (t,)
    return frozenset(R4["pathsDefinedElsewhere"].get(x, x) for x in items)


def describe(ty: Ty) -> str:
    if not ty:
        return "unknown"
    return " | ".join(sorted(_label(t) for t in ty))


def _label(t: str) -> str:
    if t.startswith("obj:"):
        return "%" + t[4:]
    return t.replace("System.", "").replace("String", "string") if t.startswith("System.") else t


def _ancestors(t: str) -> list[str]:
    out = []
    cur: str | None = t
    while cur:
        out.append(cur)
        cur = R4["type2Parent"].get(cur)
    return out


class _Checker:
    def __init__(self, expr: str, context: list[str], variables: dict[str, Variable],
                 objects: dict[str, dict[str, str]]) -> None:
        self.expr = expr
        self.root: Ty = frozenset(context) if context else None
        self.variables = variables
        self.objects = objects
        self.problems: list[Problem] = []

    # -- helpers ---------------------------------------------------------------
    def problem(self, offset: int, code: str, message: str) -> None:
        self.problems.append(Problem(offset, code, message))

    def member(self, ty: Ty, name: str, offset: int, at_root: bool, head: str | None) -> Ty:
        if ty is None:
            return None
        if at_root and name[:1].isupper() and is_type_name(name):
            if any(name in _ancestors(t) for t in ty):
                return ty
            self.problem(offset, "unknown-element",
                         f"'{name}' names a type, but the resource here is {describe(ty)}: the path is always empty")
            return frozenset()
        found: set[str] = set()
        candidates: set[str] = set()
        for t in ty:
            if t.startswith("obj:"):
                fields = self.objects.get(t, {})
                if name in fields:
                    found |= {"?"} if fields[name] == "?" else {fields[name]}
                candidates |= set(fields)
                continue
            if t == "?":
                return None
            m = members(t)
            if name == "resourceType" and "Resource" in _ancestors(t):
                m = {**m, "resourceType": "string"}  # a JSON key fhirpathpy navigates like an element
            if name in m:
                found |= _resolve(m[name])
            elif t in ("Resource", "DomainResource"):
                return None  # any resource (contained): narrow with ofType(Condition) to have it checked
            candidates |= set(m)
        if "?" in found:
            return None
        if found:
            return frozenset(found)
        if not ty:
            return frozenset()
        hint = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
        what = describe(ty)
        choices = {c for c in candidates if any(isinstance(members(t).get(c), tuple) for t in ty if not t.startswith("obj:"))}
        shown = sorted(f"{c}[x]" if c in choices else c for c in candidates
                       if not any(c.startswith(x) and c[len(x):len(x) + 1].isupper() for x in choices))
        kind = "a primitive" if all(t in PRIMITIVES for t in ty) else None
        msg = f"{what} has no element '{name}'" if kind is None else f"{what} is {kind}: it has no element '{name}'"
        var_hint = self.variables.get(name) if head is not None else None
        if hint:
            msg += f" (did you mean '{hint[0]}'?)"
        elif kind is None and shown and len(shown) <= 40 and var_hint is None:
            msg += f"; it has: {', '.join(shown)}"
        if head is not None:
            var = self.variables.get(name)
            if var is not None:
                msg += f"; %{name} is a variable of its own: {var.meaning} ({_label(var.type)})"
            if head != "resource" and (var is not None or not hint):
                msg += "; variables: " + ", ".join(f"%{k} ({v.describe()})" for k, v in sorted(self.variables.items()))
        self.problem(offset, "unknown-element", msg)
        return frozenset()

    # -- tree walk -------------------------------------------------------------
    def expression(self, ctx: Any, this: Ty, head: list[str | None]) -> Ty:
        if isinstance(ctx, P.TermExpressionContext):
            return self.term(ctx.term(), this, head)
        if isinstance(ctx, P.InvocationExpressionContext):
            left = self.expression(ctx.expression(), this, head)
            return self.invocation(ctx.invocation(), left, this, False, head)
        if isinstance(ctx, P.IndexerExpressionContext):
            left = self.expression(ctx.expression(0), this, head)
            index = ctx.expression(1)
            if index.getText() == "x":  # value[x]: the specification's notation, not FHIRPath
                name = ctx.expression(0).getText().rsplit(".", 1)[-1]
                variants = sorted({f"{name}{t[0].upper()}{t[1:]}" for t in (left or ()) if "." not in t})
                self.problem(ctx.expression(0).stop.start, "choice-notation",
                             f"'{name}[x]' is the FHIR specification's notation; in FHIRPath write '{name}' (any type), "
                             f"'{name}.ofType(Period)'" + (f" or one of {', '.join(variants)}" if variants else ""))
                return left
            self.expression(index, this, [None])
            return left
        if isinstance(ctx, P.PolarityExpressionContext):
            return self.expression(ctx.expression(), this, head)
        if isinstance(ctx, P.TypeExpressionContext):
            self.expression(ctx.expression(), this, [None])
            spec = ctx.typeSpecifier().getText()
            if ctx.getChild(1).getText() == "is":
                self.type_name(spec, ctx.typeSpecifier().start.start)
                return frozenset({"boolean"})
            return self.type_name(spec, ctx.typeSpecifier().start.start)
        if isinstance(ctx, P.UnionExpressionContext):
            a = self.expression(ctx.expression(0), this, [None])
            b = self.expression(ctx.expression(1), this, [None])
            return None if a is None or b is None else a | b
        if isinstance(ctx, (P.AdditiveExpressionContext, P.MultiplicativeExpressionContext)):
            a = self.expression(ctx.expression(0), this, [None])
            self.expression(ctx.expression(1), this, [None])
            return a if isinstance(ctx, P.AdditiveExpressionContext) else frozenset({"decimal"})
        exprs = [c for c in (ctx.getChildren() or []) if isinstance(c, P.ExpressionContext)]
        for e in exprs:
            self.expression(e, this, [None])
        return frozenset({"boolean"})

    def type_name(self, spec: str, offset: int) -> Ty:
        name = spec.split(".", 1)[1] if spec.startswith(("FHIR.", "System.")) else spec
        if is_type_name(name) or is_type_name(spec):
            return frozenset({name})
        if name in ("String", "Boolean", "Integer", "Decimal", "Date", "DateTime", "Time"):
            return frozenset({_choice_type(name)})
        hint = difflib.get_close_matches(name, sorted(set(R4["type2Parent"]) | PRIMITIVES), n=1)
        self.problem(offset, "unknown-type", f"unknown type '{name}'" + (f" (did you mean '{hint[0]}'?)" if hint else ""))
        return None

    def term(self, ctx: Any, this: Ty, head: list[str | None]) -> Ty:
        if isinstance(ctx, P.InvocationTermContext):
            return self.invocation(ctx.invocation(), this, this, True, head)
        if isinstance(ctx, P.LiteralTermContext):
            lit = ctx.literal()
            if isinstance(lit, P.StringLiteralContext):
                return frozenset({"string"})
            if isinstance(lit, P.BooleanLiteralContext):
                return frozenset({"boolean"})
            if isinstance(lit, P.NumberLiteralContext):
                return frozenset({"decimal" if "." in lit.getText() else "integer"})
            if isinstance(lit, P.QuantityLiteralContext):
                return frozenset({"Quantity"})
            if isinstance(lit, P.NullLiteralContext):
                return frozenset()
            return frozenset({"dateTime"})
        if isinstance(ctx, P.ExternalConstantTermContext):
            const = ctx.externalConstant()
            name = const.getText()[1:].strip("`'\"")
            var = self.variables.get(name)
            head[0] = name
            if var is None or var.type == "?":
                return None
            return frozenset({var.type})
        if isinstance(ctx, P.ParenthesizedTermContext):
            return self.expression(ctx.expression(), this, [None])
        return None

    def invocation(self, ctx: Any, input_: Ty, this: Ty, at_root: bool, head: list[str | None]) -> Ty:
        if isinstance(ctx, P.MemberInvocationContext):
            ident = ctx.identifier()
            name = ident.getText().strip("`")
            if at_root and head[0] is None:
                head[0] = "resource"
            return self.member(input_, name, ident.start.start, at_root, head[0])
        if isinstance(ctx, P.ThisInvocationContext):
            return this
        if isinstance(ctx, (P.IndexInvocationContext,)):
            return frozenset({"integer"})
        if isinstance(ctx, P.FunctionInvocationContext):
            return self.function(ctx.functn(), input_, this)
        return None

    def function(self, fn: Any, input_: Ty, this: Ty) -> Ty:
        ident = fn.identifier()
        name = ident.getText().strip("`")
        params = fn.paramList().expression() if fn.paramList() is not None else []
        known = set(invocation_registry) | set(EXTRA_FUNCTIONS)
        if name not in known:
            hint = difflib.get_close_matches(name, sorted(known), n=1)
            self.problem(ident.start.start, "unknown-function", f"unknown function '{name}()'"
                         + (f" (did you mean '{hint[0]}()'?)" if hint else ""))
            return None
        if name in ("ofType", "as", "is"):
            if params:
                t = self.type_name(params[0].getText(), params[0].start.start)
                return frozenset({"boolean"}) if name == "is" else t
            return None
        # fhirpathpy evaluates "AnyAtRoot" parameters (union, combine, exclude...) on the root, others on the input
        entry: dict[str, Any] = invocation_registry.get(name) or {}  # type: ignore[assignment]
        arity: dict[int, Any] = entry.get("arity") or {}
        at_root = any("AnyAtRoot" in (sig if isinstance(sig, list) else []) for sig in arity.values())
        arg_this = self.root if at_root else input_
        results = [self.expression(p, arg_this, [None]) for p in params]
        if name == "select":
            return results[0] if results else None
        if name == "iif":
            a, b = (results + [frozenset(), frozenset()])[1:3]
            return None if a is None or b is None else a | b
        if name in ("union", "combine", "coalesce"):
            if any(r is None for r in results) or input_ is None:
                return None
            out = set(input_)
            for r in results:
                out |= set(r or ())
            return frozenset(out)
        if name in _SAME_AS_INPUT:
            return input_
        if name in _BOOLEAN_FUNCTIONS:
            return frozenset({"boolean"})
        if name in EXTRA_FUNCTIONS:
            return frozenset({EXTRA_FUNCTIONS[name]})
        if name in _RESULT:
            return frozenset({_RESULT[name]})
        return None


def parse(expr: str) -> Any | None:
    """The ANTLR expression tree, or None when it does not parse (shared with the syntax check)."""
    return parse_tree(expr)[0]


def check_expression(expr: str, context: list[str], variables: dict[str, Variable] | None = None,
                     objects: dict[str, dict[str, str]] | None = None) -> list[Problem]:
    """Problems of ``expr`` evaluated on a resource of one of the ``context`` types (empty
    when it does not parse: :func:`middleware.rules.fhirpath.check_syntax` reports those)."""
    tree = parse(expr)
    if tree is None:
        return []
    checker = _Checker(expr, context, variables or {}, objects or {})
    checker.expression(tree, checker.root, [None])
    return checker.problems


def result_type(expr: str, context: list[str], variables: dict[str, Variable] | None = None,
                objects: dict[str, dict[str, str]] | None = None) -> Ty:
    """The type an expression yields on a resource of the ``context`` types (None: unknown)."""
    tree = parse(expr)
    if tree is None:
        return None
    checker = _Checker(expr, context, variables or {}, objects or {})
    return checker.expression(tree, checker.root, [None])


def variable_types(context: list[str], origin: list[str] | None = None) -> dict[str, Variable]:
    """The typed ``%variables`` of a rule expression (see middleware/rules/evaluate.py)."""
    ctx = context[0] if len(context) == 1 else "?"
    out = {
        "resource": Variable(ctx, "the event's resource"),
        "context": Variable(ctx, "the event's resource"),
        "previous": Variable(ctx, "the last known version of the resource"),
        "patient": Variable("Patient", "the Patient"),
        "age": Variable("integer", "the patient's age in whole years"),
        "hospice": Variable("boolean", "true when stored data says hospice care"),
        "diagnoses": Variable("CodeableConcept", "an Encounter's diagnosis codes"),
        "activity": Variable("CarePlan.activity", "the CarePlan activities that changed to the event's status"),
        "event": Variable("obj:event", "{type, previousStatus, status}"),
        "now": Variable("dateTime", "the clock"),
        "due": Variable("dateTime", "the trigger's due time (payload only)"),
        "ucum": Variable("string", "http://unitsofmeasure.org"),
        "sct": Variable("string", "http://snomed.info/sct"),
        "loinc": Variable("string", "http://loinc.org"),
    }
    if origin is not None:
        out["origin"] = Variable(origin[0] if len(origin) == 1 else "?", "the resource that created the pending trigger")
        out["payload"] = Variable("obj:payload", "the pending trigger's payload")
    return out


RESOURCE_OF_PREFIX = {"appointment": "Appointment", "encounter": "Encounter", "careplan": "CarePlan",
                      "patient": "Patient"}


def resources_of(events: list[str]) -> list[str]:
    """The FHIR resource types of a list of event types (``encounter.finished`` -> Encounter)."""
    out: list[str] = []
    for e in events:
        r = RESOURCE_OF_PREFIX.get(e.split(".", 1)[0])
        if r and r not in out:
            out.append(r)
    return out


@dataclass(frozen=True)
class TypeContext:
    """What one rule expression is evaluated on: the resource types and typed variables."""

    resources: tuple[str, ...]
    origin: tuple[str, ...] | None = None
    payload_keys: tuple[str, ...] = ()

    @classmethod
    def for_rule(cls, on: list[str], payload_keys: list[str]) -> "TypeContext":
        return cls(tuple(resources_of(on)), None, tuple(payload_keys))

    def cancelling(self, events: list[str]) -> "TypeContext":
        """The context of ``unless.where`` / ``wait_for.where``: the cancelling event's resource,
        with ``%origin`` (this rule's resource) and ``%payload`` (its payload fields)."""
        return TypeContext(tuple(resources_of(events)), self.resources, self.payload_keys)

    def variables(self) -> dict[str, Variable]:
        return variable_types(list(self.resources), list(self.origin) if self.origin is not None else None)

    def objects(self) -> dict[str, dict[str, str]]:
        return {"obj:event": {"type": "string", "previousStatus": "code", "status": "code"},
                "obj:payload": {k: "?" for k in self.payload_keys}}

    def check(self, expr: str) -> list[Problem]:
        return list(_check_cached(self, expr))

    def type_of(self, expr: str) -> Ty:
        if not self.resources:
            return None
        return result_type(expr, list(self.resources), self.variables(), self.objects())


@lru_cache(maxsize=4096)
def _check_cached(tc: TypeContext, expr: str) -> tuple[Problem, ...]:
    if not tc.resources:
        return ()
    return tuple(check_expression(expr, list(tc.resources), tc.variables(), tc.objects()))
