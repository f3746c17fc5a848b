"""Roles and permissions, one table for the console's users and the API's tokens.

Roles (issue 15): **analyst** (rules, playground, journeys, pseudonymous timelines), **operator**
(messages, deliveries, replay, pause), **auditor** (privacy pages, audit export, reveal with a
reason), **admin** (everything). Extra permissions may be granted by name, e.g. ``export.lds``
(a HIPAA limited-data-set outcome export, with the data use agreement recorded), which no role
but admin carries.
"""
from __future__ import annotations

OVERVIEW = "overview"
RULES = "rules"
PLAYGROUND = "playground"
JOURNEYS = "journeys"
TIMELINE = "timeline"
MESSAGES = "messages"
MESSAGES_REPLAY = "messages.replay"
DELIVERIES = "deliveries"
DELIVERIES_ACT = "deliveries.act"
PRIVACY = "privacy"
PRIVACY_ACT = "privacy.act"
AUDIT = "audit"
REVEAL = "reveal"
EXPORT_LDS = "export.lds"
USERS = "users"

ALL_PERMISSIONS = frozenset({OVERVIEW, RULES, PLAYGROUND, JOURNEYS, TIMELINE, MESSAGES, MESSAGES_REPLAY, DELIVERIES,
                             DELIVERIES_ACT, PRIVACY, PRIVACY_ACT, AUDIT, REVEAL, EXPORT_LDS, USERS})

ROLES: dict[str, frozenset[str]] = {
    "analyst": frozenset({OVERVIEW, RULES, PLAYGROUND, JOURNEYS, TIMELINE}),
    "operator": frozenset({OVERVIEW, MESSAGES, MESSAGES_REPLAY, DELIVERIES, DELIVERIES_ACT, TIMELINE}),
    "auditor": frozenset({OVERVIEW, PRIVACY, PRIVACY_ACT, AUDIT, REVEAL, TIMELINE, JOURNEYS}),
    "admin": ALL_PERMISSIONS,
}

def permissions_of(roles: tuple[str, ...], extra: tuple[str, ...] = ()) -> frozenset[str]:
    """Every permission the roles carry, plus the extra ones that exist (unknown names are ignored)."""
    out: set[str] = set()
    for r in roles:
        out |= ROLES.get(r, frozenset())
    return frozenset(out | (set(extra) & ALL_PERMISSIONS))


def roles_with(permission: str) -> list[str]:
    return [r for r, perms in ROLES.items() if permission in perms]
