"""``%conditions``: the Conditions a CarePlan is for (R4 ``CarePlan.addresses``, Reference(Condition)).

Pure helpers: which references a plan makes, and the part resolvable without a network (contained
Conditions, ``#id``). Reading the others from the FHIR source is the pipeline's
(``pipeline/conditions.py``), before the processing transaction takes the write lock.
"""
from __future__ import annotations

from typing import Any

from ..model import Conditions


def condition_refs(careplan: dict[str, Any]) -> list[str]:
    """Each ``addresses`` entry as a reference string (``#c1``, ``Condition/7``, an absolute URL),
    or ``""`` for an entry without one (identifier-only: cannot be read)."""
    return [str((a or {}).get("reference") or "") for a in careplan.get("addresses") or []]


def contained_conditions(careplan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {str(c.get("id")): c for c in careplan.get("contained") or []
            if isinstance(c, dict) and c.get("resourceType") == "Condition"}


def local_conditions(careplan: dict[str, Any]) -> Conditions:
    """``%conditions`` from the plan alone: every reference must be to a contained Condition."""
    contained = contained_conditions(careplan)
    items = []
    for i, ref in enumerate(condition_refs(careplan)):
        if ref.startswith("#") and ref[1:] in contained:
            items.append(contained[ref[1:]])
        else:
            return Conditions(error=f"CarePlan.addresses[{i}] ({ref or 'no reference'}) was not read from the FHIR source")
    return Conditions(items=tuple(items))
