"""A patient's privacy records — opt-outs (suppressions), marketing authorizations, FHIR
Consents — read for a whole batch of patient keys with the merge semantics written once.

**Merges.** An ADT^A40 merge points ``patient.merged_into`` from the merged-away key to the
survivor (``pipeline.changes.merge_patients``); merges chain (A→B, then B→C). Every key of
one patient is the whole tree of its survivor: the survivor and every key merged into it,
transitively. A record stored under *any* key of that tree counts for *every* key of it,
whether it was recorded before or after the merge and whichever key a trigger carries.
:func:`patient_keys` finds those keys for a batch in one statement (``privacy.patient_keys``: two
recursive CTEs, up to the survivor, then down to everything merged into it), run only for the keys
that ``privacy.merges_touching`` (one cheap look per batch) shows to be part of a merge. The
statements are named queries (``storage/queries/privacy.py``) run in the caller's unit of work.

**Batches.** The scheduler (fire time) and the delivery worker (send time) call
:func:`read_privacy` once per claimed batch: one statement for the merges (two when the batch
has any), then one per
table (suppression, authorization, consent) per :data:`CHUNK` keys; the checks per trigger
are dictionary look-ups in :class:`PatientPrivacy`. The reason texts stay with each stage.

FHIR Consent evaluation (:func:`consent_denies`) is pure and lives here so both stages share it
without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Iterator, Sequence

import orjson
from .. import purposes as _purposes
from .queries import privacy as _queries  # noqa: F401  (registers the privacy.* queries)
from .sql import UnitOfWork

#: patient keys per IN list (well under SQLite's bound-parameter limit whatever the batch size)
CHUNK = 500


def chunks(keys: Sequence[str], n: int = CHUNK) -> Iterator[list[str]]:
    """``keys`` in lists of at most ``n``."""
    for i in range(0, len(keys), n):
        yield list(keys[i:i + n])


def patient_keys(u: UnitOfWork, keys: Iterable[str | None]) -> dict[str, tuple[str, ...]]:
    """Every key of the patient of each given key (itself first, then the others sorted)."""
    wanted = sorted({k for k in keys if k})
    out: dict[str, tuple[str, ...]] = {k: (k,) for k in wanted}
    touched: set[str] = set()
    for part in chunks(wanted):
        for key, into in u.all("privacy.merges_touching", pks=part):
            touched.update((key, into))
    merged = sorted(touched.intersection(out))
    others: dict[str, set[str]] = {}
    for part in chunks(merged):
        for origin, key in u.all("privacy.patient_keys", pks=part):
            others.setdefault(origin, set()).add(key)
    for k, ks in others.items():
        out[k] = (k, *sorted(ks))
    return out


@dataclass(frozen=True)
class OptOut:
    """An active suppression row."""

    id: int
    patient_key: str
    destination: str | None
    purpose: str | None
    reason: str
    source: str | None

    def covers(self, destination: str | None, purpose: str) -> bool:
        """Does it stop ``purpose`` to ``destination``? ``destination=None`` asks about the
        patient as a whole (fire time): only rows for all destinations count."""
        return (self.destination is None or self.destination == destination) and self.purpose in (None, purpose)


@dataclass
class PatientPrivacy:
    """The privacy records of a batch's patients, each merged over all keys of its patient."""

    keys: dict[str, tuple[str, ...]]
    opt_outs: dict[str, tuple[OptOut, ...]] = field(default_factory=dict)
    authorized: frozenset[str] = frozenset()
    consent_json: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _parsed: dict[str, list[Any]] = field(default_factory=dict)

    def opt_out(self, patient_key: str, purpose: str, destination: str | None = None) -> OptOut | None:
        """The oldest active opt-out of this patient that covers ``purpose`` to ``destination``."""
        for r in self.opt_outs.get(patient_key, ()):
            if r.covers(destination, purpose):
                return r
        return None

    def has_marketing_authorization(self, patient_key: str) -> bool:
        return patient_key in self.authorized

    def consent_denial(self, patient_key: str, purpose: str, destination: str, at: datetime) -> str | None:
        """Why the patient's active Consents forbid this disclosure (:func:`consent_denies`), or None."""
        raw = self.consent_json.get(patient_key)
        if not raw:
            return None
        parsed = self._parsed.get(patient_key)
        if parsed is None:
            parsed = self._parsed[patient_key] = [orjson.loads(r) for r in raw]
        return consent_denies(parsed, purpose=purpose, destination=destination, at=at)


def read_privacy(u: UnitOfWork, keys: Iterable[str | None], *, marketing: Iterable[str | None] = (),
                 consents: bool = True) -> PatientPrivacy:
    """The privacy records of the patients of ``keys``: one statement for the merges (two when the
    batch has any), then one per table per :data:`CHUNK` keys. Authorizations are read only for ``marketing`` keys."""
    keys_of = patient_keys(u, keys)
    merged = {pk: ks for pk, ks in keys_of.items() if len(ks) > 1}
    every = sorted({k for ks in merged.values() for k in ks}.union(keys_of)) if merged else list(keys_of)
    out = PatientPrivacy(keys_of)
    opt_outs: dict[str, list[OptOut]] = {}
    for part in chunks(every):
        for row in u.all("privacy.active_suppressions", pks=part):
            opt_outs.setdefault(row.patient_key, []).append(OptOut(*row))
    out.opt_outs = _merged(opt_outs, keys_of, merged, key=lambda r: r.id)
    wanted = {k for k in marketing if k}
    if wanted:
        mkeys = sorted({k for pk in wanted if pk in keys_of for k in keys_of[pk]})
        granted: set[str] = set()
        for part in chunks(mkeys):
            granted.update(pk for (pk,) in u.all("privacy.marketing_authorized", pks=part))
        out.authorized = frozenset(pk for pk in wanted if pk in keys_of and not granted.isdisjoint(keys_of[pk]))
    if consents:
        found: dict[str, list[tuple[int, str]]] = {}
        for part in chunks(every):
            for cid, pk, resource in u.all("privacy.active_consents", pks=part):
                found.setdefault(pk, []).append((cid, resource))
        out.consent_json = {pk: tuple(r for _, r in rows)
                            for pk, rows in _merged(found, keys_of, merged, key=lambda x: x[0]).items()}
    return out


def _merged(by_key: dict[str, list[Any]], keys_of: dict[str, tuple[str, ...]], merged: dict[str, tuple[str, ...]],
            key: Any) -> dict[str, tuple[Any, ...]]:
    """Rows per key of the batch, each with the rows of every key of its patient (oldest first)."""
    out = {pk: tuple(rows) for pk, rows in by_key.items() if pk in keys_of and pk not in merged}
    for pk, ks in merged.items():
        rows = sorted((r for k in ks for r in by_key.get(k, ())), key=key)
        if rows:
            out[pk] = tuple(rows)
    return out


# -- FHIR Consent evaluation (pure) --

#: Our purpose names → HL7 v3 ActReason codes that express the same purpose of use.
PURPOSE_CODES: dict[str, frozenset[str]] = {p.name: p.consent_codes for p in _purposes.PURPOSES.values()}


def _parse_dt(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else None


def _in_period(prov: dict[str, Any], at: datetime) -> bool:
    period = prov.get("period") or {}
    start, end = _parse_dt(period.get("start")), _parse_dt(period.get("end"))
    return (start is None or start <= at) and (end is None or at <= end)


def _purpose_matches(prov: dict[str, Any], purpose: str) -> bool | None:
    codes = prov.get("purpose") or []
    if not codes:
        return None
    wanted = _purposes.consent_codes(purpose)
    return any(isinstance(c, dict) and c.get("code") in wanted for c in codes)


def _actor_matches(prov: dict[str, Any], destination: str) -> bool | None:
    actors = prov.get("actor") or []
    if not actors:
        return None
    for a in actors:
        ref = (a or {}).get("reference") or {}
        if ref.get("reference") in (f"Organization/{destination}", f"Device/{destination}", destination):
            return True
        if (ref.get("identifier") or {}).get("value") == destination or ref.get("display") == destination:
            return True
    return False


def _matches(prov: dict[str, Any], purpose: str, destination: str, at: datetime) -> bool:
    if not _in_period(prov, at):
        return False
    checks = [_purpose_matches(prov, purpose), _actor_matches(prov, destination)]
    return all(c is not False for c in checks)


def _nested_match(prov: dict[str, Any], kind: str, purpose: str, destination: str, at: datetime) -> dict[str, Any] | None:
    for sub in prov.get("provision") or []:
        if not isinstance(sub, dict):
            continue
        if sub.get("type") == kind and _matches(sub, purpose, destination, at):
            return sub
        deeper = _nested_match(sub, kind, purpose, destination, at)
        if deeper is not None:
            return deeper
    return None


def consent_denies(consents: Iterable[dict[str, Any]], *, purpose: str, destination: str, at: datetime) -> str | None:
    """The reason a patient's Consent resources forbid sending ``purpose`` to ``destination`` at
    ``at``, or ``None``. Rules (most restrictive wins across several Consents):

    * Only ``status: active`` Consents count; a ``provision.period`` outside ``at`` makes a
      provision inapplicable.
    * A provision *matches* when each of its constraints that is present matches: ``purpose``
      (a Coding whose ``code`` is our purpose name, or a v3-ActReason code mapped from it — see
      :data:`PURPOSE_CODES`) and ``actor`` (``Organization/<destination>``, an identifier value
      or display equal to the destination name). A provision with neither matches everything.
    * Root ``type: deny`` that matches → denied, unless a nested ``permit`` provision matches
      (an exception). Root ``permit`` → denied when a nested ``deny`` provision matches.
      Nested provisions are searched recursively.
    """
    for c in consents:
        if not isinstance(c, dict) or c.get("status") != "active":
            continue
        cid = c.get("id") or "(no id)"
        root = c.get("provision")
        if not isinstance(root, dict):
            continue
        rtype = root.get("type", "permit")
        if rtype == "deny" and _matches(root, purpose, destination, at):
            if _nested_match(root, "permit", purpose, destination, at) is None:
                return f"consent {cid}: deny provision for purpose {purpose} / destination {destination}"
        elif rtype == "permit":
            if _nested_match(root, "deny", purpose, destination, at) is not None:
                return f"consent {cid}: deny provision for purpose {purpose} / destination {destination}"
    return None
