"""``careloop contact-keys``: rotate the contact-key secret without losing a patient's history.

    careloop contact-keys export --from v1 --to v2 --out map.csv [--destination NAME] [--reason TEXT]
    careloop contact-keys resolve ck_...        # the patient key a contact key stands for

The export is CSV ``old_key,new_key`` (pseudonymous keys only) for every patient
disclosed to the destinations, and is itself written to the admin audit.
"""
from __future__ import annotations

import argparse
import sys

from .serve import add_common, open_data, settings_from


def _keyring(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from ..keyring import contact_keyring

    return contact_keyring(settings_from(args))


def _setup(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    keyring = _keyring(args)
    return keyring, open_data(settings_from(args))


def cmd_export(args: argparse.Namespace) -> int:
    from ..delivery.admin_audit import cli_actor, record
    from ..delivery.contact_keys import export_mapping

    try:
        keyring = _keyring(args)
        keyring.get(args.from_version), keyring.get(args.to_version)
    except (ValueError, KeyError) as exc:
        print(f"careloop contact-keys export: {str(exc).strip(chr(39))}", file=sys.stderr)
        return 2
    engine = open_data(settings_from(args))
    target = f"{args.from_version}->{args.to_version}"
    try:
        with open(args.out, "w", encoding="utf-8", newline="") as fh:
            n = export_mapping(engine, keyring, args.from_version, args.to_version, fh, destination=args.destination)
    except (OSError, ValueError) as exc:
        record(engine, actor=cli_actor(), channel="cli", action="contact_keys.export", outcome="error",
               target_kind="contact-key-version", target_id=target, reason=args.reason,
               detail={"error": type(exc).__name__, "destination": args.destination})
        print(f"careloop contact-keys export: {exc}", file=sys.stderr)
        return 2
    record(engine, actor=cli_actor(), channel="cli", action="contact_keys.export", target_kind="contact-key-version",
           target_id=target, reason=args.reason, detail={"rows": n, "destination": args.destination})
    print(f"exported {n} contact key pair(s) {target} to {args.out}")
    return 0


def cmd_resolve(args: argparse.Namespace) -> int:
    from ..delivery.contact_keys import resolve

    try:
        keyring, engine = _setup(args)
    except ValueError as exc:
        print(f"careloop contact-keys resolve: {exc}", file=sys.stderr)
        return 2
    found = resolve(engine, keyring, args.key)
    if found is None:
        print("careloop contact-keys resolve: no known patient has this key under a secret valid for lookups",
              file=sys.stderr)
        return 1
    print(f"{found[0]}\t{found[1]}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("contact-keys", help="contact-key secret rotation: export old->new keys, resolve a key")
    csub = p.add_subparsers(dest="contact_keys_command", metavar="ACTION", required=True)
    pe = csub.add_parser("export", help="CSV old_key,new_key for every disclosed patient (admin-audited)")
    pe.add_argument("--from", dest="from_version", required=True, help="old secret version, e.g. v1")
    pe.add_argument("--to", dest="to_version", required=True, help="new secret version, e.g. v2")
    pe.add_argument("--out", required=True, help="CSV file to write")
    pe.add_argument("--destination", help="only patients disclosed to this destination")
    pe.add_argument("--reason", help="why (kept in the admin audit; no PHI)")
    add_common(pe)
    pe.set_defaults(func=cmd_export)
    pr = csub.add_parser("resolve", help="the patient key a contact key stands for (any secret valid for lookups)")
    pr.add_argument("key")
    add_common(pr)
    pr.set_defaults(func=cmd_resolve)
