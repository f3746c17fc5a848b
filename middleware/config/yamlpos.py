"""YAML loading that keeps line and column of every node, and ``${VAR:-default}`` interpolation.

Every problem found in a configuration or mapping file becomes a :class:`Diagnostic`
printed as ``path:line:col: level[code] message``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

_ENV = re.compile(r"\$\{([A-Z0-9_]+)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class Diagnostic:
    """One finding in a file, with a 1-based position."""

    path: str
    line: int
    col: int
    level: str  # "error" | "warning" | "info"
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.level}[{self.code}] {self.message}"


class Positioned(dict):  # type: ignore[type-arg]
    """A mapping that remembers where each key and value sat in the file."""

    line: int = 1
    col: int = 1

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.key_pos: dict[str, tuple[int, int]] = {}
        #: for scalar values: (line, col, source text) of the value as written (quotes, block header...)
        self.val_src: dict[str, tuple[int, int, str]] = {}


class PositionedList(list):  # type: ignore[type-arg]
    line: int = 1
    col: int = 1

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.item_pos: list[tuple[int, int]] = []


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}`` from the environment."""
    names: Mapping[str, str] = os.environ if env is None else env

    def sub(m: re.Match[str]) -> str:
        val = names.get(m.group(1))
        if val is None or val == "":
            return m.group(2) if m.group(2) is not None else ""
        return val

    return _ENV.sub(sub, text)


def _build(node: yaml.Node, interp: bool, text: str = "", path: str = "") -> Any:
    if isinstance(node, yaml.MappingNode):
        out = Positioned()
        out.line, out.col = node.start_mark.line + 1, node.start_mark.column + 1
        for k, v in node.value:
            # keys stay strings: YAML 1.1 would turn `on:` / `no:` into booleans
            key = k.value if isinstance(k, yaml.ScalarNode) else _build(k, interp, text, path)
            if key == "<<" and isinstance(k, yaml.ScalarNode):
                raise YamlError(Diagnostic(path, k.start_mark.line + 1, k.start_mark.column + 1, "error", "yaml",
                                           "merge keys (<<) are not supported: write the fields out"))
            if str(key) in out.key_pos:
                first = out.key_pos[str(key)]
                raise YamlError(Diagnostic(
                    path, k.start_mark.line + 1, k.start_mark.column + 1, "error", "duplicate-key",
                    f"duplicate key '{key}' (first at line {first[0]}); YAML would silently keep only the last one"))
            out[key] = _build(v, interp, text, path)
            out.key_pos[str(key)] = (k.start_mark.line + 1, k.start_mark.column + 1)
            if isinstance(v, yaml.ScalarNode) and text:
                out.val_src[str(key)] = (v.start_mark.line + 1, v.start_mark.column + 1,
                                         text[v.start_mark.index:v.end_mark.index])
        return out
    if isinstance(node, yaml.SequenceNode):
        seq = PositionedList()
        seq.line, seq.col = node.start_mark.line + 1, node.start_mark.column + 1
        for item in node.value:
            seq.append(_build(item, interp, text, path))
            seq.item_pos.append((item.start_mark.line + 1, item.start_mark.column + 1))
        return seq
    assert isinstance(node, yaml.ScalarNode)
    value = yaml.SafeLoader(  # reuse the safe constructor for scalar typing
        ""
    ).construct_object(node)
    if interp and isinstance(value, str) and "${" in value:
        value = interpolate(value)
    return value


class YamlError(Exception):
    def __init__(self, diag: Diagnostic) -> None:
        super().__init__(str(diag))
        self.diagnostic = diag


def load_positioned(path: Path, *, interp: bool = True) -> Any:
    """Parse one YAML file into dicts/lists that carry positions; raise YamlError with file:line."""
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = str(exc.problem or exc)
        if problem in ("mapping values are not allowed here", "did not find expected key",
                       "expected <block end>, but found '-'", "expected <block end>, but found '<block mapping start>'",
                       "did not find expected '-' indicator"):
            problem += " (an indentation slip? keys of one mapping must start in the same column)"
        raise YamlError(Diagnostic(str(path), line, col, "error", "yaml", problem)) from exc
    if node is None:
        return None
    return _build(node, interp, text, str(path))


def value_position(container: Any, key: str, value: str, offset: int) -> tuple[int, int]:
    """File line and column of character ``offset`` of the scalar ``container[key]`` (its
    parsed ``value``), wherever it was written: plain, quoted, or a folded/literal block
    spanning lines. Falls back to the key's position."""
    src = getattr(container, "val_src", {}).get(str(key))
    if src is None:
        return position_of(container, key)
    line, col, raw = src
    j = 0
    if raw[:1] in ("|", ">"):
        j = raw.find("\n") + 1 if "\n" in raw else len(raw)
    elif raw[:1] in ("'", '"'):
        j = 1
    for i, ch in enumerate(value):
        if not ch.isspace():  # folding and quoting change only whitespace and quotes
            while j < len(raw) and raw[j] != ch:
                j += 1
        if i == offset or j >= len(raw):
            break
        j += 1
    j = min(j, len(raw))
    before = raw[:j]
    nl = before.count("\n")
    if nl:
        return line + nl, j - before.rfind("\n")
    return line, col + j


def position_of(container: Any, key: str | int | None = None) -> tuple[int, int]:
    """Best known position of ``container[key]`` (or of the container)."""
    if isinstance(container, Positioned) and key is not None and str(key) in container.key_pos:
        return container.key_pos[str(key)]
    if isinstance(container, PositionedList) and isinstance(key, int) and key < len(container.item_pos):
        return container.item_pos[key]
    return getattr(container, "line", 1), getattr(container, "col", 1)


@dataclass
class DiagnosticSink:
    """Collects diagnostics for one file."""

    path: str
    items: list[Diagnostic] = field(default_factory=list)

    def error(self, where: Any, key: str | int | None, code: str, message: str) -> None:
        line, col = position_of(where, key)
        self.items.append(Diagnostic(self.path, line, col, "error", code, message))

    def warning(self, where: Any, key: str | int | None, code: str, message: str) -> None:
        line, col = position_of(where, key)
        self.items.append(Diagnostic(self.path, line, col, "warning", code, message))

    @property
    def has_errors(self) -> bool:
        return any(d.level == "error" for d in self.items)


def pydantic_errors_to_diagnostics(sink: DiagnosticSink, raw: Any, exc: Any) -> None:
    """Translate a pydantic ValidationError into positioned diagnostics, with suggestions."""
    import difflib

    for err in exc.errors():
        loc = list(err.get("loc", ()))
        node: Any = raw
        parent: Any = raw
        last: str | int | None = None
        for part in loc:
            parent, last = node, part
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                break
        msg = err.get("msg", "invalid")
        code = err.get("type", "invalid")
        dotted = ".".join(str(p) for p in loc)
        if code == "extra_forbidden":
            code = "unknown-field"
            allowed: list[str] = list(err.get("ctx", {}).get("allowed", []))
            model_fields = _allowed_fields(exc, loc)
            hint = difflib.get_close_matches(str(last), model_fields or allowed, n=1)
            msg = f"unknown field '{last}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")
        elif code == "missing":
            code = "missing-field"
            msg = f"required field '{last}' is missing"
            at = parent if not isinstance(parent, (Positioned, PositionedList)) else node if isinstance(node, Positioned) else parent
            sink.error(at, None, code, f"{dotted}: {msg}")
            continue
        elif code in _EXPECTED:
            msg = f"{dotted}: {expectation(code, last, err.get('input'))}"
            code = "wrong-type"
        else:
            msg = f"{dotted}: {msg}"
        sink.error(parent, last, code, msg)


#: what a pydantic type error expected, said plainly
_EXPECTED = {
    "list_type": "a list", "string_type": "text", "bool_type": "true or false", "bool_parsing": "true or false",
    "int_type": "a whole number", "int_parsing": "a whole number", "float_type": "a number", "float_parsing": "a number",
    "dict_type": "a mapping (key: value)", "model_type": "a mapping of fields", "model_attributes_type": "a mapping of fields",
}
#: field name -> (what its items are, an example value) for type errors
FIELD_EXAMPLES: dict[str, tuple[str, str]] = {
    "on": ("event names", "[appointment.noshow]"),
    "events": ("event names", "[appointment.booked, appointment.rescheduled]"),
    "destinations": ("destination names", "[webhook]"),
    "from": ("statuses", "[booked, pending]"),
    "to": ("statuses", "[cancelled]"),
    "allow": ("payload field names", "[purpose, appointment_start]"),
    "purposes": ("purposes", "[treatment-reminder, care-coordination]"),
    "holidays": ("dates", '["2025-12-24"]'),
    "unless": ("cancelling events", "[{on: [appointment.cancelled], same: resource}]"),
    "rules": ("rules", "\n  - id: my-rule\n    on: [appointment.booked]"),
    "sources": ("sources", "\n  - name: default\n    kind: hl7v2"),
    "payload": ("fields", "{appointment_start: start}"),
    "when": ("fields", "{after: 2d}  or  {at: start, offset: -1d}"),
    "wait_for": ("fields", "{events: [appointment.booked], timeout: 48h}"),
    "dedup": ("fields", "{key: \"'tcm'\", window: 30d}"),
    "emit": ("fields", "{trigger: my_trigger, destinations: [webhook]}"),
    "quiet_hours": ("fields", '{start: "21:00", end: "08:00"}'),
    "caps": ("fields", "{per_day: 1, per_week: 3}"),
    "policy": ("fields", "{mode: fields, allow: [purpose]}"),
    "valuesets": ("value sets", "{my-set: ['http://snomed.info/sct|385763009']}"),
}


def expectation(code: str, field_name: Any, value: Any) -> str:
    """``expected a list of event names, e.g. on: [appointment.noshow] (got the text 'appointment.noshow')``."""
    want = _EXPECTED.get(code, "another kind of value")
    noun, example = FIELD_EXAMPLES.get(str(field_name), ("", ""))
    if want == "a list" and noun:
        want = f"a list of {noun}"
    out = f"expected {want}"
    if example:
        out += f", e.g. {field_name}: {example}"
    elif want == "true or false":
        out += f", e.g. {field_name}: true"
    got = {str: "the text", bool: "", int: "the number", float: "the number", dict: "a mapping", list: "a list"}
    if value is not None:
        kind = got.get(type(value), type(value).__name__)
        shown = "" if isinstance(value, (dict, list)) else f" {value!r}"
        out += f" (got {kind}{shown})".replace("( ", "(")
    return out


def _allowed_fields(exc: Any, loc: list[Any]) -> list[str]:
    model = getattr(exc, "_careloop_model", None)
    if model is None:
        return []
    cur = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        f = getattr(cur, "model_fields", {}).get(part)
        if f is None:
            return []
        ann = f.annotation
        for cand in getattr(ann, "__args__", (ann,)):
            inner = getattr(cand, "__args__", None)
            if inner:
                for c in inner:
                    if hasattr(c, "model_fields"):
                        cand = c
            if hasattr(cand, "model_fields"):
                cur = cand
                break
    names = list(getattr(cur, "model_fields", {}).keys())
    aliases = [f.alias for f in getattr(cur, "model_fields", {}).values() if f.alias]
    return names + aliases
