"""Load a mappings directory into a validated, compiled :class:`RuleSet`.

Every problem is a positioned :class:`Diagnostic` (file:line:col); nothing half-valid
is ever returned: callers get ``(None, diagnostics)`` when any error was found.
"""
from __future__ import annotations

import difflib
from datetime import date
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..config.destinations import Destination, load_destinations
from ..config.sources import Sources, load_sources
from ..config.yamlpos import (Diagnostic, DiagnosticSink, YamlError, load_positioned, position_of,
                               pydantic_errors_to_diagnostics, value_position)
from ..catalogue import ACTIVITY_STATUSES, EVENT_TYPES, STATUSES
from .check import TypeContext
from .payload_check import check_payload, policy_positions
from .. import purposes
from .fhirpath import Compiled, ValueSets, check_syntax, compile_expr
from .goal import check_goal_and_holdout
from .journeys import JourneyInfo, OverlapPair, check_overlaps, exclusive_map, expand, starters
from .recheck import recheckable
from .spec import Caps, Rule, RuleFileSpec, Settings

#: event prefix -> FHIR resource type
RESOURCE_TYPES = {"appointment": "Appointment", "encounter": "Encounter", "careplan": "CarePlan"}

_MEMBER_OF = re.compile(r"memberOf\(\s*'([^']+)'\s*\)")
_VARIABLE = re.compile(r"(?<![\w'])%([A-Za-z_][\w]*)")
#: %variables every expression may use (see rules/evaluate.py); %origin/%payload only in cancel conditions
VARIABLES = frozenset({"previous", "patient", "event", "now", "age", "hospice", "diagnoses", "conditions", "activity", "due",
                       "resource", "context", "ucum", "sct", "loinc"})
CANCEL_VARIABLES = frozenset({"origin", "payload"})


@dataclass
class CompiledRule:
    rule: Rule
    path: str
    line: int
    where: Compiled | None = None
    at: Compiled | None = None
    not_after: Compiled | None = None
    dedup_key: Compiled | None = None
    unless_where: list[Compiled | None] = field(default_factory=list)
    wait_where: Compiled | None = None
    payload: dict[str, Compiled] = field(default_factory=dict)
    journey: JourneyInfo | None = None  # set on the step rules of a journey
    node: Any = None  # its YAML node (positions for rule-set wide checks)

    @property
    def id(self) -> str:
        return self.rule.id


@dataclass
class RuleSet:
    version: str
    rules: list[CompiledRule]
    settings: Settings
    destinations: dict[str, Destination]
    sources: Sources
    valuesets: ValueSets
    directory: Path
    by_event: dict[str, list[CompiledRule]] = field(default_factory=dict)
    cancellers: dict[str, list[tuple[CompiledRule, int]]] = field(default_factory=dict)
    #: rule id -> [(rule or journey id that supersedes it, its rule ids)] (overlap.exclusive_with)
    superseded_by: dict[str, list[tuple[str, tuple[str, ...]]]] = field(default_factory=dict)
    #: every overlapping pair of rules/journeys and how it is declared (the golden runner checks them)
    overlaps: list[OverlapPair] = field(default_factory=list)
    #: message_kind -> a journey's cap (besides settings.caps)
    kind_caps: dict[str, Caps] = field(default_factory=dict)
    #: resource type -> rules whose pending triggers a change to such a resource re-checks (rules/recheck.py)
    recheck_by_type: dict[str, list[CompiledRule]] = field(default_factory=dict)

    def rule(self, rule_id: str) -> CompiledRule | None:
        return next((r for r in self.rules if r.id == rule_id), None)


def rule_files(directory: Path) -> list[Path]:
    rdir = directory / "rules"
    files = sorted(rdir.glob("*.yaml")) if rdir.is_dir() else []
    return [p for p in files if not p.name.endswith("_test.yaml")]


def _load_valuesets(directory: Path, diags: list[Diagnostic], digest: Any = None) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    vdir = directory / "valuesets"
    if not vdir.is_dir():
        return out
    for p in sorted(vdir.glob("*.yaml")):
        if digest is not None:
            digest.update(p.name.encode() + b"\0" + p.read_bytes())
        sink = DiagnosticSink(str(p))
        try:
            raw = load_positioned(p)
        except YamlError as exc:
            diags.append(exc.diagnostic)
            out.setdefault(p.stem, set())  # its errors are reported; rules naming it are not
            continue
        if not isinstance(raw, dict) or "valueset" not in raw or not ("codes" in raw or "include" in raw):
            sink.error(raw, None, "invalid-valueset", "a value set file needs 'valueset' (its name) and 'codes' "
                       "(a list of {system, code}) or 'include' (a list of {system, codes: [...]})")
            diags.extend(sink.items)
            continue
        for k in raw:
            if k not in ("valueset", "description", "source", "synthetic", "version", "codes", "include"):
                hint = difflib.get_close_matches(
                    str(k), ["valueset", "description", "source", "synthetic", "version", "codes", "include"], n=1)
                sink.error(raw, k, "unknown-field", f"unknown field '{k}'" + (f" (did you mean '{hint[0]}'?)" if hint else ""))
        codes: set[str] = set()
        for i, c in enumerate(raw.get("codes") or []):
            if isinstance(c, dict) and c.get("code"):
                codes.add(f"{c.get('system', '')}|{c['code']}")
            elif isinstance(c, str):
                codes.add(c if "|" in c else f"|{c}")
            else:
                sink.error(raw["codes"], i, "invalid-code", "each code needs 'code' (and usually 'system')")
        for i, inc in enumerate(raw.get("include") or []):
            if not isinstance(inc, dict) or not inc.get("system") or not isinstance(inc.get("codes"), list):
                sink.error(raw["include"], i, "invalid-include", "each include needs 'system' and a list 'codes'")
                continue
            codes.update(f"{inc['system']}|{c}" for c in inc["codes"])
        out[str(raw["valueset"])] = codes
        diags.extend(sink.items)
    return out


def plain_diagnostic(d: Diagnostic) -> Diagnostic:
    """Say pydantic's value errors plainly: ``error[bad-duration] rules.0.when.after: '2 days' is not...``."""
    if d.code not in ("value_error", "assertion_error"):
        return d
    msg = d.message.replace("Value error, ", "")
    code = "bad-duration" if "is not a duration" in msg else "bad-time" if "is not a time of day" in msg else "invalid"
    return Diagnostic(d.path, d.line, d.col, d.level, code, msg)


def _check_expr(sink: DiagnosticSink, node: Any, key: str | int, expr: str | None, vs_names: set[str], what: str,
                extra_vars: frozenset[str] = frozenset(), types: TypeContext | None = None) -> bool:
    if expr is None:
        return True
    ok = True
    for prob in check_syntax(expr):
        line, col = value_position(node, str(key), expr, prob.offset)
        sink.items.append(Diagnostic(sink.path, line, col, "error", "fhirpath", f"{what}: FHIRPath syntax: {prob.message}"))
        ok = False
    if ok and types is not None:
        for tp in types.check(expr):
            line, col = value_position(node, str(key), expr, tp.offset)
            sink.items.append(Diagnostic(sink.path, line, col, "error", tp.code, f"{what}: {tp.message}"))
            ok = False
    def at(offset: int, level: str, code: str, message: str) -> None:
        line, col = value_position(node, str(key), expr, offset)
        sink.items.append(Diagnostic(sink.path, line, col, level, code, message))

    for mm in _MEMBER_OF.finditer(expr):
        name = mm.group(1)
        if name not in vs_names:
            hint = difflib.get_close_matches(name, list(vs_names), n=1)
            at(mm.start(1), "error", "unknown-valueset", f"{what}: unknown value set '{name}'"
               + (f" (did you mean '{hint[0]}'?)" if hint
                  else " (add mappings/valuesets/<name>.yaml or an inline `valuesets:` entry)"))
            ok = False
    known = VARIABLES | extra_vars
    for vm in _VARIABLE.finditer(expr):
        var = vm.group(1)
        if var not in known:
            hint = difflib.get_close_matches(var, sorted(VARIABLES | CANCEL_VARIABLES), n=1)
            where_ok = " (only in unless.where / wait_for.where)" if var in CANCEL_VARIABLES else ""
            typed = types.variables() if types is not None else {}
            listing = "; variables: " + ", ".join(f"%{k} ({v.describe()})" for k, v in sorted(typed.items()))
            at(vm.start(), "error", "unknown-variable", f"{what}: unknown variable %{var}{where_ok}"
               + (f" (did you mean %{hint[0]}?)" if hint and not where_ok else listing if typed and not where_ok else ""))
            ok = False
    return ok


def _check_events(sink: DiagnosticSink, node: Any, key: str, events: list[str]) -> None:
    seq = node.get(key) if isinstance(node, dict) else None
    for i, ev in enumerate(events):
        if ev not in EVENT_TYPES:
            hint = difflib.get_close_matches(ev, sorted(EVENT_TYPES), n=1)
            where, k = (seq, i) if isinstance(seq, list) else (node, key)
            sink.error(where, k, "unknown-event", f"unknown event type '{ev}'"
                       + (f" (did you mean '{hint[0]}'?)" if hint else " (see `careloop events`)"))


def _check_send_time(sink: DiagnosticSink, node: Any, rule: Rule, settings: Settings) -> None:
    """Warn when ``when.at_time`` lies inside the quiet hours that apply to the rule: the
    send then moves to the end of the quiet hours (docs/rules.md#send-times)."""
    from .sendtime import parse_time_of_day

    qh = rule.when.quiet_hours or settings.quiet_hours
    if not rule.when.at_time or qh is None or rule.channel == "email":
        return
    t = parse_time_of_day(rule.when.at_time).strftime("%H:%M")
    inside = (t >= qh.start or t < qh.end) if qh.start > qh.end else (qh.start <= t < qh.end)
    if inside:
        sink.warning(node.get("when", node) if isinstance(node, dict) else node, "at_time", "send-time-in-quiet-hours",
                     f"rule '{rule.id}': at_time {t} is inside quiet hours {qh.start}-{qh.end}; "
                     f"{rule.channel} sends move to {qh.end}")


def _today(settings: Settings) -> str:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    return datetime.now(ZoneInfo(settings.site_timezone)).date().isoformat()


def _compiler(valuesets: ValueSets, settings: Settings) -> Any:
    from .timing import make_calendar

    cal = make_calendar(settings.holiday_calendar, settings.holidays)
    return lambda expr: compile_expr(expr, valuesets, cal, settings.site_timezone)


def _check_calendar(sink: DiagnosticSink, raw: Any, settings: Settings) -> None:
    from .sendtime import known_calendar

    if settings.holiday_calendar and not known_calendar(settings.holiday_calendar):
        sink.error(raw, "holiday_calendar", "unknown-calendar",
                   f"'{settings.holiday_calendar}' is not a holiday calendar; use US (U.S. federal holidays), "
                   "a country code such as CA or GB, or null")


def _check_settings(directory: Path, settings: Settings, vs: dict[str, set[str]], diags: list[Diagnostic]) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    path = directory / "settings.yaml"
    raw = load_positioned(path) if path.exists() else {}
    sink = DiagnosticSink(str(path))
    try:
        ZoneInfo(settings.site_timezone)
    except (ZoneInfoNotFoundError, ValueError):
        sink.error(raw, "site_timezone", "unknown-timezone", f"'{settings.site_timezone}' is not an IANA time zone (e.g. America/New_York)")
    _check_calendar(sink, raw, settings)
    for i, h in enumerate(settings.holidays):
        try:
            date.fromisoformat(h)
        except ValueError:
            sink.error(raw.get("holidays") if isinstance(raw, dict) else raw, i, "bad-date", f"holiday '{h}' is not a date YYYY-MM-DD")
    if settings.suppress_hospice and settings.hospice_valueset not in vs:
        sink.warning(raw, "suppress_hospice", "unknown-valueset",
                     f"hospice suppression needs value set '{settings.hospice_valueset}' (mappings/valuesets/); "
                     "without it hospice is not detected")
    diags.extend(sink.items)


def load_settings(directory: Path, diags: list[Diagnostic]) -> Settings:
    path = directory / "settings.yaml"
    if not path.exists():
        return Settings()
    sink = DiagnosticSink(str(path))
    try:
        raw = load_positioned(path)
        return Settings.model_validate(raw or {})
    except YamlError as exc:
        diags.append(exc.diagnostic)
    except ValidationError as exc:
        exc._careloop_model = Settings  # type: ignore[attr-defined]
        pydantic_errors_to_diagnostics(sink, raw, exc)
        diags.extend(sink.items)
    return Settings()


def _names_if_broken(ddiags: list[Diagnostic], raw: Any) -> set[str] | None:
    """None when destinations.yaml loaded cleanly; else the destination names it still shows
    (empty when it does not parse: then no rule is checked against it)."""
    if not any(d.level == "error" for d in ddiags):
        return None
    items = raw.get("destinations") if isinstance(raw, dict) else None
    names = {str(i["name"]) for i in items if isinstance(i, dict) and "name" in i} if isinstance(items, list) else set()
    return names


def load_ruleset(directory: Path) -> tuple[RuleSet | None, list[Diagnostic]]:
    """Validate and compile everything under ``directory``; errors make the result None."""
    directory = Path(directory)
    diags: list[Diagnostic] = []
    if not directory.is_dir():
        return None, [Diagnostic(str(directory), 1, 1, "error", "missing", "mappings directory does not exist")]
    sources, sdiags = load_sources(directory)
    diags += sdiags
    dests, ddiags, draw = load_destinations(directory)
    diags += ddiags
    dest_by_name = {d.name: d for d in dests}
    # no cascade: with destinations.yaml in error, rules are checked only against the names it
    # still shows (none when it does not parse), and its own errors are the only ones reported
    dests_broken = _names_if_broken(ddiags, draw)
    dest_positions = policy_positions(draw)
    settings = load_settings(directory, diags)
    digest = hashlib.sha256()
    vs = _load_valuesets(directory, diags, digest)
    if not any(d.level == "error" for d in diags):
        _check_settings(directory, settings, vs, diags)
    compiled: list[CompiledRule] = []
    seen_ids: dict[str, str] = {}
    journey_nodes: dict[str, tuple[str, Any, Any]] = {}
    kind_caps: dict[str, Caps] = {}
    sinks: dict[str, DiagnosticSink] = {}
    files = rule_files(directory)
    for extra in ("sources.yaml", "destinations.yaml", "settings.yaml"):
        if (directory / extra).exists():
            digest.update((directory / extra).read_bytes())
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
        sink = DiagnosticSink(str(path))
        try:
            raw = load_positioned(path)
        except YamlError as exc:
            diags.append(exc.diagnostic)
            continue
        try:
            spec = RuleFileSpec.model_validate(raw or {})
        except ValidationError as exc:
            exc._careloop_model = RuleFileSpec  # type: ignore[attr-defined]
            pydantic_errors_to_diagnostics(sink, raw, exc)
            diags += [plain_diagnostic(d) for d in sink.items]
            continue
        file_vs = {k: {c if "|" in c else f"|{c}" for c in v} for k, v in spec.valuesets.items()}
        vs.update(file_vs)
        names = set(vs)
        items: list[tuple[Rule, Any, int, JourneyInfo | None, list[tuple[Any, str, str | None]] | None]] = []
        for i, rule in enumerate(spec.rules):
            items.append((rule, raw["rules"][i], position_of(raw["rules"], i)[0], None, None))
        for i, journey in enumerate(spec.journeys):
            jnode = raw["journeys"][i]
            jline = position_of(raw["journeys"], i)[0]
            if journey.id in seen_ids:
                sink.error(jnode, "id", "duplicate-rule", f"journey id '{journey.id}' is already used in {seen_ids[journey.id]}")
            seen_ids[journey.id] = f"{path}:{jline}"
            journey_nodes[journey.id] = (str(path), jnode, journey.overlap)
            if journey.cap is not None:
                kind_caps[journey.message_kind or journey.id] = Caps(per_day=journey.cap.per_day, per_week=journey.cap.per_week)
            for x in expand(journey, jnode, sink):
                items.append((x.rule, x.node, x.line, x.info, x.where_parts))
        for rule, node, line, info, where_parts in items:
            if rule.id in seen_ids:
                sink.error(node, "id", "duplicate-rule", f"rule id '{rule.id}' is already used in {seen_ids[rule.id]}")
            seen_ids[rule.id] = f"{path}:{line}"
            _check_events(sink, node, "on", rule.on)
            types = {e.split(".")[0] for e in rule.on}
            for key, sts in (("from", rule.from_), ("to", rule.to)):
                allowed = {s for t in types for s in STATUSES.get(t, ())} | set(ACTIVITY_STATUSES)
                for s in sts or []:
                    if s not in allowed:
                        hint = difflib.get_close_matches(s, sorted(allowed), n=1)
                        sink.error(node, key, "unknown-status", f"'{s}' is not a status of {', '.join(sorted(types))}"
                                   + (f" (did you mean '{hint[0]}'?)" if hint else ""))
            tc = TypeContext.for_rule(rule.on, [*rule.emit.payload, "purpose"])
            for j, u in enumerate(rule.unless):
                _check_events(sink, node["unless"][j], "on", u.on)
                _check_expr(sink, node["unless"][j], "where", u.where, names, "unless.where", CANCEL_VARIABLES,
                            tc.cancelling(u.on))
            if rule.wait_for:
                _check_events(sink, node["wait_for"], "events", rule.wait_for.events)
                _check_expr(sink, node["wait_for"], "where", rule.wait_for.where, names, "wait_for.where", CANCEL_VARIABLES,
                            tc.cancelling(rule.wait_for.events))
            for wnode_, wkey, wexpr in where_parts or [(node, "where", rule.where)]:
                _check_expr(sink, wnode_, wkey, wexpr, names, "where", types=tc)
            if (purposes.clinically_required(rule.purpose) and "on_no_longer_matching" not in node
                    and (info is None or info.step == 1)):  # said once per journey
                sink.error(node, "purpose", "reschedule-policy",
                           f"{'journey' if info else 'rule'} '{info.journey_id if info else rule.id}': purpose "
                           f"{rule.purpose} is clinically required; state what a change that makes `where` false does "
                           "to a pending trigger: `on_no_longer_matching: cancel` or `keep`")
            wnode = node.get("when", node)
            _check_expr(sink, wnode, "at", rule.when.at, names, "when.at", types=tc)
            _check_expr(sink, wnode, "not_after", rule.when.not_after, names, "when.not_after", types=tc)
            if rule.dedup:
                _check_expr(sink, node["dedup"], "key", rule.dedup.key, names, "dedup.key", types=tc)
            enode = node["emit"]
            for k, expr in rule.emit.payload.items():
                _check_expr(sink, enode["payload"], k, expr, names, f"payload.{k}", types=tc)
            for j, dname in enumerate(rule.emit.destinations):
                d = dest_by_name.get(dname)
                where, dest_key = (enode["destinations"], j)
                if dests_broken is not None:
                    if dests_broken and dname not in dests_broken:
                        sink.error(where, dest_key, "unknown-destination", f"unknown destination '{dname}' "
                                   "(destinations.yaml has errors, see above)")
                    continue
                if d is None:
                    hint = difflib.get_close_matches(dname, list(dest_by_name), n=1)
                    sink.error(where, dest_key, "unknown-destination", f"unknown destination '{dname}'"
                               + (f" (did you mean '{hint[0]}'?)" if hint
                                  else f"; defined: {', '.join(sorted(dest_by_name)) or 'none'}"))
                elif not d.baa:
                    sink.error(where, dest_key, "no-baa",
                               f"rule '{rule.id}' sends patient-level triggers to '{dname}', which has no business associate "
                               "agreement (baa: false); HIPAA forbids it, hashed identifiers included")
                elif rule.purpose not in d.policy.purposes:
                    sink.error(where, dest_key, "purpose-not-allowed", f"destination '{dname}' does not accept purpose '{rule.purpose}'")
            if dests_broken is None:
                check_payload(sink, enode, rule.id, rule.emit.payload,
                              [dest_by_name[n] for n in dict.fromkeys(rule.emit.destinations) if n in dest_by_name],
                              tc, str(directory / "destinations.yaml"), dest_positions, rule.emit.internal)
            if purposes.needs_authorization(rule.purpose) and rule.channel in ("sms", "voice"):
                sink.warning(node, "purpose", "marketing-consent",
                             f"rule '{rule.id}': marketing {rule.channel} needs prior express written consent; triggers for "
                             "patients without a recorded authorization are suppressed at send time")
            _check_send_time(sink, node, rule, settings)
            if rule.goal is not None or rule.holdout is not None:
                check_goal_and_holdout(sink, node, rule, names, _today(settings), _check_events, _check_expr)
            if sink.has_errors:
                continue
            cr = CompiledRule(rule=rule, path=str(path), line=line, journey=info, node=node)
            valuesets = ValueSets(vs)
            comp = _compiler(valuesets, settings)
            cr.where = comp(rule.where) if rule.where else None
            cr.at = comp(rule.when.at) if rule.when.at else None
            cr.not_after = comp(rule.when.not_after) if rule.when.not_after else None
            cr.dedup_key = comp(rule.dedup.key) if rule.dedup else None
            cr.unless_where = [comp(u.where) if u.where else None for u in rule.unless]
            cr.wait_where = comp(rule.wait_for.where) if rule.wait_for and rule.wait_for.where else None
            for k, expr in rule.emit.payload.items():
                cr.payload[k] = comp(expr)
            compiled.append(cr)
        diags += list(dict.fromkeys(sink.items))  # a journey's entry and exits are checked once per step: say each once
    units = starters(compiled, journey_nodes)
    # a rule or file that did not compile is missing from `units`: naming it is not another error (no cascade)
    overlaps = check_overlaps(units, lambda p: sinks.setdefault(p, DiagnosticSink(p)),
                              unknown_is_error=not any(d.level == "error" for d in diags))
    for osink in sinks.values():
        diags += osink.items
    if any(d.level == "error" for d in diags):
        return None, diags
    rs = RuleSet(
        version=digest.hexdigest()[:12],
        rules=[c for c in compiled if c.rule.enabled],
        settings=settings,
        destinations=dest_by_name,
        sources=sources,
        valuesets=ValueSets(vs),
        directory=directory,
        superseded_by=exclusive_map(units),
        overlaps=overlaps,
        kind_caps=kind_caps,
    )
    for cr in rs.rules:
        for ev in cr.rule.on:
            rs.by_event.setdefault(ev, []).append(cr)
        if recheckable(cr):
            for rtype in sorted({RESOURCE_TYPES.get(ev.split(".")[0], "") for ev in cr.rule.on} - {""}):
                rs.recheck_by_type.setdefault(rtype, []).append(cr)
        for j, u in enumerate(cr.rule.unless):
            for ev in u.on:
                rs.cancellers.setdefault(ev, []).append((cr, j))
        if cr.rule.wait_for:
            for ev in cr.rule.wait_for.events:
                rs.cancellers.setdefault(ev, []).append((cr, -1))
    return rs, diags
