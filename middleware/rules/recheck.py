"""Re-check pending triggers when their resource changes (pure; docs/rules.md#reschedules).

A change to a resource (a reschedule to another service, a corrected discharge
disposition) can make the rule that scheduled a pending trigger evaluate false. The
pipeline asks :func:`recheck` for each rule with pending triggers on that resource:

* ``match``: the rule still holds (a flag set by an earlier partial change is cleared);
* ``no-match``: ``where`` is false on complete data: the rule's ``on_no_longer_matching``
  decides (``cancel``, the default, or ``keep``);
* ``unknown``: the rule cannot be evaluated on this change (a partial update such as an
  ADT^A08 without PV1-45, an element ``where`` reads that the previous version had and
  this one lacks, an evaluation error): the trigger is **kept and flagged**, never
  cancelled. A flagged trigger of a purpose that may be dropped on missing data
  (marketing, see :mod:`middleware.purposes`) is suppressed at its due time.

Rules whose ``where`` reads ``%previous``, ``%event``, ``%activity``, ``%origin``,
``%payload`` or ``%due`` describe a transition or one activity, not the resource's state;
they are not re-checked on later changes (their ``unless`` conditions say what cancels
them).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from ..model import ClinicalEvent
from .fhirpath import truthy

if TYPE_CHECKING:
    from .load import CompiledRule

#: variables that make a condition about one transition or activity: not re-checked
NOT_RECHECKED = frozenset({"previous", "event", "activity", "origin", "payload", "due"})
_VAR = re.compile(r"%([A-Za-z_]\w*)")
_STRING = re.compile(r"'(?:[^'\\]|\\.)*'")
_IDENT = re.compile(r"(?<![\w.%$])([a-z][A-Za-z0-9]*)\b(?!\s*\()")
_KEYWORDS = frozenset({"and", "or", "not", "xor", "implies", "true", "false", "is", "as", "in", "contains", "div", "mod",
                       "day", "days", "week", "weeks", "month", "months", "year", "years", "hour", "hours", "minute",
                       "minutes", "second", "seconds", "millisecond", "milliseconds", "today", "now"})

Verdict = Literal["match", "no-match", "unknown"]


def recheckable(cr: "CompiledRule") -> bool:
    """Is this rule's ``where`` a condition on the resource's state that a later change can re-check?"""
    w = cr.rule.where
    return w is not None and cr.where is not None and not (set(_VAR.findall(w)) & NOT_RECHECKED)


def elements(expr: str) -> frozenset[str]:
    """The top-level element names an expression reads (``class.code = 'IMP'`` -> {class})."""
    text = _STRING.sub("''", expr)
    return frozenset(n for n in _IDENT.findall(text) if n not in _KEYWORDS)


@dataclass(frozen=True)
class Recheck:
    verdict: Verdict
    why: str


def recheck(cr: "CompiledRule", resource: dict[str, Any], previous: dict[str, Any] | None, env: dict[str, Any],
            *, partial: str | None = None) -> Recheck:
    """Evaluate ``cr``'s ``where`` on the changed ``resource``; ``partial`` says why the change is
    known to be incomplete (else elements that went missing since ``previous`` make it so)."""
    assert cr.where is not None
    text = " ".join(str(cr.rule.where).split())
    try:
        ok = truthy(cr.where(resource, env))
    except Exception as exc:  # noqa: BLE001 - any evaluation failure means "cannot tell"
        return Recheck("unknown", f"where could not be evaluated: {type(exc).__name__}")
    if ok:
        return Recheck("match", "where still holds")
    missing = sorted(n for n in elements(text) if previous and n in previous and n not in resource)
    if partial or missing:
        why = partial or f"the change lacks {', '.join(missing)} (present before)"
        return Recheck("unknown", f"where is false on incomplete data: {why}")
    return Recheck("no-match", f"where is false: {text}")


def event_for(resource: dict[str, Any], previous: dict[str, Any] | None, key: str, patient_key: str | None,
              source: str, arrival: str, at: datetime) -> ClinicalEvent:
    """A state-only event for building the FHIRPath environment of a re-check."""
    rtype = str(resource.get("resourceType", ""))
    return ClinicalEvent(type=f"{rtype.lower()}.updated", previous_status=(previous or {}).get("status"),
                         status=resource.get("status"), resource_type=rtype, resource_key=key, patient_key=patient_key,
                         resource=resource, previous=previous, source=source, arrival=arrival, occurred_at=at)
