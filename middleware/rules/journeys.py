"""Journeys, overlap and the journey timeline (docs/rules.md#journeys).

A journey (``journeys:`` in a rule file) is compiled here into one rule per step, so the
engine that evaluates, schedules, cancels and fires rules runs journeys unchanged:

* step ``s`` of journey ``j`` is the rule ``j.s``: the entry's ``on``/``from``/``to``/
  ``where`` (and-ed with the step's own ``where``), the step's timing and payload, the
  journey's purpose, message kind, dedup and reschedule policy;
* the journey's **exits** come first in every step's ``unless`` list: one exit event
  cancels every pending step in the same transaction, with the exit's name in the reason;
* **one dedup scope**: every step's trigger carries the journey's dedup key; a second
  entry within the window is skipped step by step while any step of an earlier entry is
  pending or fired (steps of one entry never block each other);
* **one cap**: the steps share one ``message_kind`` (default: the journey id), and
  ``cap`` limits the journey's messages per patient besides ``settings.caps``.

Overlap: two starters (rules or journeys) *overlap* when they start on a common event
type with the same purpose and a common destination. Validation warns about each such
pair unless one declares ``overlap:`` for the other (``exclusive_with``, enforced at run
time, or ``with`` + ``discriminator``, checked here); the golden runner fails a case in
which an undeclared or exclusive pair both fired on one event.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterable
from zoneinfo import ZoneInfo

from ..config.yamlpos import DiagnosticSink, Positioned, PositionedList, position_of
from .spec import Journey, JourneyStep, Rule, parse_duration

if TYPE_CHECKING:
    from .evaluate import Decision
    from .load import CompiledRule, RuleSet


@dataclass(frozen=True)
class JourneyInfo:
    """What a compiled step rule knows of its journey."""

    journey_id: str
    step: int  # 1-based, in the journey's order
    step_id: str
    steps: int
    exits: tuple[str, ...]  # the first len(exits) entries of the rule's ``unless`` are the journey's exits

    def exit_name(self, unless_index: int) -> str | None:
        return self.exits[unless_index] if 0 <= unless_index < len(self.exits) else None


@dataclass
class Expanded:
    """One step of a journey as a rule, with a node that positions its fields in the journey's YAML."""

    rule: Rule
    node: Positioned
    line: int
    info: JourneyInfo
    where_parts: list[tuple[Any, str, str | None]] = field(default_factory=list)


def step_rule_id(journey_id: str, step_id: str) -> str:
    return f"{journey_id}.{step_id}"


def _combine(a: str | None, b: str | None) -> str | None:
    if a and b:
        return f"({' '.join(a.split())}) and ({' '.join(b.split())})"
    return a or b


def _node(parts: list[tuple[Any, list[str]]]) -> Positioned:
    """A mapping whose keys point into the journey/step nodes (for file:line of each field)."""
    out = Positioned()
    for src, keys in parts:
        if not isinstance(src, Positioned):
            continue
        out.line, out.col = src.line, src.col
        for k in keys:
            if k in src:
                out[k] = src[k]
                out.key_pos[k] = src.key_pos.get(k, (src.line, src.col))
    return out


def expand(journey: Journey, raw: Any, sink: DiagnosticSink) -> list[Expanded]:
    """The step rules of one journey; structural problems (duplicate step ids) go to ``sink``."""
    jnode: Positioned = raw if isinstance(raw, Positioned) else Positioned()
    got = jnode.get("entry")
    entry: Positioned = got if isinstance(got, Positioned) else Positioned()
    got = jnode.get("steps")
    steps_node: PositionedList = got if isinstance(got, PositionedList) else PositionedList()
    got = jnode.get("exit")
    exits_node: PositionedList = got if isinstance(got, PositionedList) else PositionedList()
    seen: dict[str, int] = {}
    exit_names: dict[str, int] = {}
    for i, ex in enumerate(journey.exit):
        if ex.name in exit_names:
            sink.error(exits_node[i] if i < len(exits_node) else jnode, "name", "duplicate-exit",
                       f"journey '{journey.id}': exit name '{ex.name}' is used twice")
        exit_names[ex.name] = i
    _check_order(journey, steps_node, sink)
    out: list[Expanded] = []
    for i, step in enumerate(journey.steps):
        snode = steps_node[i] if i < len(steps_node) and isinstance(steps_node[i], Positioned) else Positioned()
        if step.id in seen:
            sink.error(snode, "id", "duplicate-step", f"journey '{journey.id}': step id '{step.id}' is already used "
                       f"by step {seen[step.id] + 1}")
        seen[step.id] = i
        unless = list(journey.exit) + list(step.unless)
        step_unless = snode.get("unless")
        step_unless = step_unless if isinstance(step_unless, PositionedList) else PositionedList()
        unode = PositionedList([*exits_node, *step_unless])
        unode.item_pos = list(exits_node.item_pos) + list(step_unless.item_pos)
        unode.line, unode.col = position_of(snode, "unless") if "unless" in snode else position_of(jnode, "exit")
        node = _node([(jnode, ["purpose", "dedup", "message_kind", "channel", "on_rule_change", "on_no_longer_matching",
                               "overlap", "goal", "holdout"]),
                      (entry, ["on", "from", "to", "include_backfill"]),
                      (snode, ["id", "when", "wait_for", "emit", "channel"])])
        node["unless"] = unode
        node.key_pos["unless"] = (unode.line, unode.col)
        rule = Rule.model_validate({
            "id": step_rule_id(journey.id, step.id),
            "description": step.description or journey.description,
            "source": journey.source,
            "on": journey.entry.on,
            "from": journey.entry.from_,
            "to": journey.entry.to,
            "where": _combine(journey.entry.where, step.where),
            "include_backfill": journey.entry.include_backfill,
            "when": step.when,
            "unless": unless,
            "wait_for": step.wait_for,
            "dedup": journey.dedup,
            "message_kind": journey.message_kind or journey.id,
            "purpose": journey.purpose,
            "channel": step.channel or journey.channel,
            "on_rule_change": journey.on_rule_change,
            "on_no_longer_matching": journey.on_no_longer_matching,
            "emit": step.emit,
            "enabled": journey.enabled,
            "goal": journey.goal,
            "holdout": journey.holdout,
        })
        line, _ = position_of(steps_node, i)
        info = JourneyInfo(journey.id, i + 1, step.id, len(journey.steps), tuple(e.name for e in journey.exit))
        parts = [(entry, "where", journey.entry.where), (snode, "where", step.where)]
        out.append(Expanded(rule, node, line, info, parts))
    return out


def _delay(step: JourneyStep) -> tuple[str, float] | None:
    """(kind, amount) of a step's delay after the entry when it can be compared, else None."""
    if step.when.at:
        return None
    text = step.when.after or (step.wait_for.timeout if step.wait_for else None)
    if text is None:
        return ("elapsed", 0.0)
    amount, business = parse_duration(text)
    return ("business days" if business else "elapsed", amount)


def _check_order(journey: Journey, steps_node: Any, sink: DiagnosticSink) -> None:
    """Steps are ordered: a step whose delay after the entry is shorter than an earlier one's is an error."""
    latest: tuple[int, tuple[str, float]] | None = None
    for i, step in enumerate(journey.steps):
        d = _delay(step)
        if d is None:
            continue
        if latest is not None and latest[1][0] == d[0] and d[1] < latest[1][1]:
            prev = journey.steps[latest[0]]
            where = steps_node[i] if i < len(steps_node) else steps_node
            sink.error(where, "id", "step-order", f"journey '{journey.id}': steps are ordered, but step {i + 1} "
                       f"'{step.id}' is due before step {latest[0] + 1} '{prev.id}' (sooner after the entry)")
        if latest is None or latest[1][0] != d[0] or d[1] >= latest[1][1]:
            latest = (i, d)


# -- overlap ---------------------------------------------------------------------------


@dataclass
class Starter:
    """A rule, or a journey with all its steps: what overlap is about."""

    id: str
    rule_ids: tuple[str, ...]
    on: frozenset[str]
    purpose: str
    destinations: frozenset[str]
    triggers: frozenset[str]
    payloads: tuple[dict[str, str], ...]
    overlap: Any  # spec.Overlap | None
    path: str
    node: Any  # the YAML node of the rule or journey (for positions)


def starters(rules: Iterable["CompiledRule"], journey_nodes: dict[str, tuple[str, Any, Any]]) -> list[Starter]:
    """Group compiled rules into starters (a standalone rule, or a journey's steps)."""
    by_journey: dict[str, list["CompiledRule"]] = {}
    out: list[Starter] = []
    for cr in rules:
        if cr.journey is not None:
            by_journey.setdefault(cr.journey.journey_id, []).append(cr)
            continue
        r = cr.rule
        out.append(Starter(r.id, (r.id,), frozenset(r.on), r.purpose, frozenset(r.emit.destinations),
                           frozenset({r.emit.trigger}), (dict(r.emit.payload),), r.overlap, cr.path, cr.node))
    for jid, crs in by_journey.items():
        path, node, overlap = journey_nodes.get(jid, (crs[0].path, None, None))
        first = crs[0].rule
        out.append(Starter(jid, tuple(c.id for c in crs), frozenset(first.on), first.purpose,
                           frozenset(d for c in crs for d in c.rule.emit.destinations),
                           frozenset(c.rule.emit.trigger for c in crs), tuple(dict(c.rule.emit.payload) for c in crs),
                           overlap, path, node))
    return out


def _const(expr: str | None) -> str | None:
    e = (expr or "").strip()
    return e[1:-1] if len(e) >= 2 and e[0] == e[-1] == "'" else None


def _separates(disc: str, a: Starter, b: Starter) -> str | None:
    """None when ``disc`` tells a's triggers from b's; else why not."""
    if disc == "trigger":
        same = sorted(a.triggers & b.triggers)
        return f"both emit trigger '{same[0]}'" if same else None
    va = [_const(p.get(disc)) for p in a.payloads]
    vb = [_const(p.get(disc)) for p in b.payloads]
    if any(v is None for v in va + vb):
        return (f"payload field '{disc}' must be a quoted constant in every trigger of both "
                f"(e.g. {disc}: \"'{a.id}'\")")
    common = sorted({v for v in va if v is not None} & {v for v in vb if v is not None})
    return f"both send {disc} = '{common[0]}'" if common else None


@dataclass(frozen=True)
class OverlapPair:
    a: str
    b: str
    how: str  # "undeclared" | "exclusive" | "discriminated"


def check_overlaps(units: list[Starter], sinks: Callable[[str], DiagnosticSink],
                   unknown_is_error: bool = True) -> list[OverlapPair]:
    """Warn about undeclared overlaps, error on unknown ids and discriminators that do not separate."""
    by_id = {u.id: u for u in units}
    known = sorted(by_id)
    for u in units:
        if u.overlap is None:
            continue
        onode = u.node.get("overlap") if isinstance(u.node, dict) else None
        for key, ids in (("exclusive_with", u.overlap.exclusive_with), ("with", u.overlap.with_)):
            for i, other in enumerate(ids):
                if other not in by_id:
                    if not unknown_is_error:  # it may be in a file or rule that failed already
                        continue
                    hint = difflib.get_close_matches(other, known, n=1)
                    seq = onode.get(key) if isinstance(onode, dict) else None
                    where, k = (seq, i) if isinstance(seq, list) else (onode or u.node, key)
                    sinks(u.path).error(where, k, "unknown-rule", f"overlap.{key}: no rule or journey '{other}'"
                                        + (f" (did you mean '{hint[0]}'?)" if hint else ""))
                elif other == u.id:
                    sinks(u.path).error(onode or u.node, key, "invalid", f"overlap.{key} names '{u.id}' itself")
        if u.overlap.discriminator:
            for other in u.overlap.with_:
                o = by_id.get(other)
                why = _separates(u.overlap.discriminator, u, o) if o is not None else None
                if why:
                    sinks(u.path).error(onode or u.node, "discriminator", "overlap-discriminator",
                                        f"discriminator '{u.overlap.discriminator}' does not separate '{u.id}' from "
                                        f"'{other}': {why}")
    pairs: list[OverlapPair] = []
    for i, a in enumerate(units):
        for b in units[i + 1:]:
            common = a.on & b.on
            if not common or a.purpose != b.purpose or not (a.destinations & b.destinations):
                continue
            how = _declared(a, b) or _declared(b, a)
            if how is None:
                how = "undeclared"
                ev = sorted(common)[0]
                dest = sorted(a.destinations & b.destinations)[0]
                # said at the later one (a journey, or the later rule): usually the one just added
                kind = "journey" if len(b.rule_ids) > 1 or b.rule_ids[0] != b.id else "rule"
                sinks(b.path).warning(b.node, "id", "overlap",
                                      f"{kind} '{b.id}' and '{a.id}' ({a.path}) both start on {ev} with purpose "
                                      f"{a.purpose} to {dest}: both fire for one event; declare `overlap: "
                                      f"{{exclusive_with: [{a.id}]}}` or `overlap: {{with: [{a.id}], discriminator: ...}}`")
            pairs.append(OverlapPair(a.id, b.id, how))
    return pairs


def _declared(a: Starter, b: Starter) -> str | None:
    if a.overlap is None:
        return None
    if b.id in a.overlap.exclusive_with:
        return "exclusive"
    if b.id in a.overlap.with_:
        return "discriminated"
    return None


def exclusive_map(units: list[Starter]) -> dict[str, list[tuple[str, tuple[str, ...]]]]:
    """rule id -> [(starter id that supersedes it, that starter's rule ids)]."""
    by_id = {u.id: u for u in units}
    out: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
    for u in units:
        for other in (u.overlap.exclusive_with if u.overlap else []):
            o = by_id.get(other)
            for rid in (o.rule_ids if o else ()):
                out.setdefault(rid, []).append((u.id, u.rule_ids))
    return out


def apply_exclusive(decisions: list["Decision"], rs: "RuleSet", taken: Callable[[tuple[str, ...]], bool]) -> None:
    """Mark decisions of superseded rules ``skipped``: when the superseding starter fires on this
    event, or already holds the resource (``taken``: a pending or fired trigger of its rules)."""
    if not rs.superseded_by:
        return
    fired_now = {d.rule_id for d in decisions if d.fired and d.status == "pending"}
    for d in decisions:
        if not d.fired or d.status != "pending":
            continue
        for sid, rule_ids in rs.superseded_by.get(d.rule_id, ()):
            if fired_now.intersection(rule_ids) or taken(rule_ids):
                d.status = "skipped"
                d.reason = f"superseded by {sid} (overlap.exclusive_with)"
                break


# -- the journey timeline ----------------------------------------------------------------


def _iso(ts: float | None, zone: str | None = None) -> str:
    if ts is None:
        return "-"
    dt = datetime.fromtimestamp(ts, tz=timezone.utc)
    return (dt.astimezone(ZoneInfo(zone)) if zone else dt).isoformat()


def timeline(rows: Iterable[Any], rs: "RuleSet | None" = None) -> list[dict[str, Any]]:
    """Each journey entry (journey id + entry event) with its steps: planned time, outcome, reason.

    ``rows`` are trigger rows (``journey_id``, ``journey_step``, ``event_id``, ``due_at``, ...).
    A step that never got a trigger (its condition was false, its time had no value) is
    listed as ``not started``. Times are in the site's zone when ``rs`` is given."""
    zone = rs.settings.site_timezone if rs is not None else None
    entries: dict[tuple[str, int], dict[str, Any]] = {}
    for t in rows:
        jid = getattr(t, "journey_id", None)
        if not jid:
            continue
        e = entries.setdefault((jid, t.event_id or 0), {
            "journey": jid, "entry_event": t.event_id, "patient_key": t.patient_key, "entered_at": _iso(t.created_at, zone),
            "steps": {}, "exit": None})
        step = {"step": t.journey_step, "rule": t.rule_id, "trigger_id": t.id, "planned": _iso(t.due_at, zone),
                "status": t.status, "at": _iso(t.fired_at if t.status == "fired" else t.updated_at, zone),
                "reason": t.reason or "", "flag": getattr(t, "flag", None)}
        e["steps"][t.journey_step] = step
        if t.status == "cancelled" and "exit '" in (t.reason or ""):
            e["exit"] = e["exit"] or {"at": step["at"], "reason": t.reason}
    out = []
    for (jid, _), e in sorted(entries.items(), key=lambda kv: (kv[1]["entered_at"], kv[0])):
        total = max(e["steps"]) if e["steps"] else 0
        if rs is not None:
            total = max([total] + [cr.journey.steps for cr in rs.rules if cr.journey and cr.journey.journey_id == jid])
        steps = []
        for n in range(1, total + 1):
            if n in e["steps"]:
                steps.append(e["steps"][n])
                continue
            rule = next((cr.id for cr in rs.rules if cr.journey and cr.journey.journey_id == jid and cr.journey.step == n),
                        None) if rs is not None else None
            steps.append({"step": n, "rule": rule, "trigger_id": None, "planned": "-", "status": "not started",
                          "at": "-", "reason": "no trigger (see the entry event's decisions)", "flag": None})
        out.append(dict(e, steps=steps))
    return out


def format_timeline(entries: list[dict[str, Any]]) -> list[str]:
    """Readable lines for ``careloop explain`` and the golden runner."""
    lines: list[str] = []
    for e in entries:
        lines.append(f"journey {e['journey']} (entry: event {e['entry_event']}, {e['entered_at']})")
        for s in e["steps"]:
            flag = f"  [flagged: {s['flag']}]" if s.get("flag") else ""
            lines.append(f"  step {s['step']} {s['rule'] or '?'}: planned {s['planned']} -> {s['status']}"
                         + (f" at {s['at']}" if s["status"] not in ("pending", "not started") else "")
                         + (f": {s['reason']}" if s["status"] not in ("pending", "fired") and s["reason"] else "") + flag)
        if e["exit"]:
            lines.append(f"  exit at {e['exit']['at']}: {e['exit']['reason']}")
    return lines


def both_fired(rows: Iterable[Any], rs: "RuleSet") -> list[str]:
    """Overlap pairs (undeclared or exclusive) of which both fired (pending or fired) on one event."""
    by_event: dict[tuple[int, str | None], set[str]] = {}
    owner = {}
    for cr in rs.rules:
        owner[cr.id] = cr.journey.journey_id if cr.journey else cr.id
    for t in rows:
        if t.status in ("pending", "fired") and t.event_id is not None and t.rule_id in owner:
            by_event.setdefault((t.event_id, t.patient_key), set()).add(owner[t.rule_id])
    out = []
    for (event_id, _), ids in sorted(by_event.items(), key=lambda kv: kv[0][0]):
        for p in rs.overlaps:
            if p.how != "discriminated" and p.a in ids and p.b in ids:
                out.append(f"overlap: '{p.a}' and '{p.b}' both fired on event {event_id}"
                           + (" although one is exclusive_with the other" if p.how == "exclusive"
                              else " (no overlap declared; see `careloop mappings validate`)"))
    return out
