"""Versioned contact-key secrets (``CARELOOP_CONTACT_KEY_SECRETS``).

    CARELOOP_CONTACT_KEY_SECRETS="v2:<new secret>,v1:<old secret>:2027-06-30"

The first entry is current: contact keys sent from now on are HMACs under it. Every older
entry must state the last day (UTC, inclusive) it stays valid for lookups: a contact key a
vendor sends back (a STOP reply, an unsubscribe) still resolves to the patient until then.
Without ``CARELOOP_CONTACT_KEY_SECRETS``, ``CARELOOP_CONTACT_KEY_SECRET`` is version ``v1``.
A leaf module: it parses, it does no I/O.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timezone

from .settings import Settings

_VERSION = re.compile(r"^[A-Za-z0-9_.-]{1,16}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class ContactSecret:
    version: str
    secret: str
    valid_until: date | None = None  # None for the current secret

    def valid_on(self, day: date) -> bool:
        return self.valid_until is None or day <= self.valid_until


@dataclass(frozen=True)
class ContactKeyring:
    """Contact-key secrets, current first."""

    secrets: tuple[ContactSecret, ...]

    @property
    def current(self) -> ContactSecret:
        return self.secrets[0]

    def get(self, version: str) -> ContactSecret:
        """The secret of ``version``; raises KeyError naming the configured versions."""
        for s in self.secrets:
            if s.version == version:
                return s
        raise KeyError(f"no contact-key secret version {version!r} (configured: {', '.join(self.versions())})")

    def versions(self) -> list[str]:
        return [s.version for s in self.secrets]

    def for_lookup(self, now: datetime | None = None) -> list[ContactSecret]:
        """The secrets a contact key may have been made with and still resolves under, current first."""
        day = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).date()
        return [s for s in self.secrets if s.valid_on(day)]


def parse_keyring(spec: str) -> ContactKeyring:
    """Parse ``version:secret[,version:secret:YYYY-MM-DD...]``; raises ValueError with one line."""
    out: list[ContactSecret] = []
    for i, entry in enumerate((e.strip() for e in spec.split(",")), 1):
        if not entry:
            continue
        version, sep, rest = entry.partition(":")
        if not sep or not _VERSION.match(version) or not rest:
            raise ValueError(f"CARELOOP_CONTACT_KEY_SECRETS entry {i} is not 'version:secret[:valid-until]'")
        secret, until = rest, None
        head, _, tail = rest.rpartition(":")
        if head and _DATE.match(tail):
            secret, until = head, date.fromisoformat(tail)
        if out and until is None:
            raise ValueError(f"CARELOOP_CONTACT_KEY_SECRETS entry {i} ({version}) is an older secret: "
                             "state the last day it stays valid for lookups, as version:secret:YYYY-MM-DD")
        if any(s.version == version for s in out):
            raise ValueError(f"CARELOOP_CONTACT_KEY_SECRETS names version {version!r} twice")
        out.append(ContactSecret(version, secret, None if not out else until))
    if not out:
        raise ValueError("CARELOOP_CONTACT_KEY_SECRETS is set but names no secret")
    return ContactKeyring(tuple(out))


def contact_keyring(settings: Settings) -> ContactKeyring:
    """The configured keyring: ``contact_key_secrets`` when set, else the single secret as ``v1``."""
    if settings.contact_key_secrets and settings.contact_key_secrets.strip():
        return parse_keyring(settings.contact_key_secrets)
    return ContactKeyring((ContactSecret("v1", settings.contact_key_secret),))
