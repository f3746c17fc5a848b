"""Rotating the contact-key secret never loses a patient's history at a vendor.

End to end: a webhook receives a patient's contact key under v1 (the single
``CARELOOP_CONTACT_KEY_SECRET``), the secret is rotated (``CARELOOP_CONTACT_KEY_SECRETS``
with v2 current, v1 valid for lookups until a stated day), the next send carries the v2
key; both keys resolve to the patient while v1 is valid, and
``careloop contact-keys export --from v1 --to v2`` maps the old key to the new one
(pseudonymous keys only) and is written to the admin audit.
"""
from __future__ import annotations

import asyncio
import csv
import getpass
from datetime import datetime, timezone
from pathlib import Path

import pytest
from httpx import AsyncClient

from middleware.cli import main as cli
from middleware.delivery.admin_audit import query
from middleware.delivery.contact_keys import resolve
from middleware.config.policy import contact_key
from middleware.delivery.sink import SinkServer
from middleware.delivery.worker import DeliveryWorker
from middleware.keyring import contact_keyring, parse_keyring
from middleware.settings import Settings

from support.delivery_pipeline import SECRETS, WEBHOOK_SECRET, Pipeline, destination, hl7_bytes, make_pipeline, write_mappings

S1 = "v1-synthetic-contact-secret-0123456789abcdef"
S2 = "v2-synthetic-contact-secret-fedcba9876543210"


def _deliver(p: Pipeline, secret: str, at: datetime) -> None:
    """Fire what is due at ``at`` (pipeline clock) and deliver it now (real clock: signatures carry real time)."""
    p.clock.now = at
    assert p.scheduler.fire_due() == 1

    async def go() -> None:
        async with AsyncClient() as http:
            w = DeliveryWorker(p.engine, p.ruleset, contact_secret=secret, http=http, secrets=SECRETS)
            while await w.run_once():
                pass
            await w.aclose()
    asyncio.run(go())


def test_rotation_keeps_old_keys_resolvable_and_exports_old_to_new(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # one appointment on 2024-04-02 09:15 -0400: reminders due 72 h and 24 h before
    with SinkServer([WEBHOOK_SECRET]) as sink:
        p = make_pipeline(db_url, write_mappings(tmp_path, [destination("webhook", "webhook", webhook_url=sink.url + "/hooks")]))
        p.ingest([hl7_bytes("siu_s12_v251.hl7")])
        before = contact_keyring(Settings(contact_key_secret=S1))
        assert before.versions() == ["v1"]  # the single variable is version v1
        _deliver(p, before.current.secret, datetime(2024, 3, 31, tzinfo=timezone.utc))
        old_keys = {r["contact_key"] for r in sink.received()}
        spec = f"v2:{S2},v1:{S1}:2099-12-31"
        after = contact_keyring(Settings(contact_key_secret=S1, contact_key_secrets=spec))
        assert after.current.version == "v2"
        _deliver(p, after.current.secret, datetime(2024, 4, 1, 14, tzinfo=timezone.utc))
        new_keys = {r["contact_key"] for r in sink.received()} - old_keys
    assert len(sink.received()) == 2 and len(old_keys) == 1 and len(new_keys) == 1
    (k1,), (k2,) = old_keys, new_keys
    patient = resolve(p.engine, after, k2)
    assert patient is not None and patient[1] == "v2"
    # a key from before the rotation still resolves to the same patient, under v1
    assert resolve(p.engine, after, k1) == (patient[0], "v1")
    # ... until the stated day: after it, v1 is no longer used for lookups
    assert resolve(p.engine, after, k1, now=datetime(2100, 1, 1, tzinfo=timezone.utc)) is None

    monkeypatch.setenv("CARELOOP_CONTACT_KEY_SECRETS", spec)
    out = tmp_path / "map.csv"
    assert cli(["contact-keys", "export", "--from", "v1", "--to", "v2", "--out", str(out),
                "--database-url", p.db_url, "--reason", "annual rotation"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert rows == [{"old_key": k1, "new_key": k2}]
    text = out.read_text()
    assert patient[0] not in text and "MRN" not in text  # pseudonymous keys only
    audit, _ = query(p.engine, action="contact_keys.export")
    assert len(audit) == 1
    a = audit[0]
    assert a["actor"] == getpass.getuser() and a["channel"] == "cli" and a["outcome"] == "ok"
    assert a["target_id"] == "v1->v2" and a["reason"] == "annual rotation" and a["detail"]["rows"] == 1


def test_export_unknown_version_is_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CARELOOP_CONTACT_KEY_SECRETS", f"v2:{S2},v1:{S1}:2099-12-31")
    rc = cli(["contact-keys", "export", "--from", "v0", "--to", "v2", "--out", str(tmp_path / "x.csv"),
              "--database-url", f"sqlite:///{tmp_path}/x.db"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "v0" in err and "Traceback" not in err


def test_older_secret_must_state_until_when_it_is_valid() -> None:
    with pytest.raises(ValueError, match="last day"):
        parse_keyring(f"v2:{S2},v1:{S1}")
    ring = parse_keyring(f"v2:{S2},v1:{S1}:2027-06-30")
    day = datetime(2027, 6, 30, 23, 0, tzinfo=timezone.utc)
    assert [s.version for s in ring.for_lookup(day)] == ["v2", "v1"]
    assert [s.version for s in ring.for_lookup(datetime(2027, 7, 1, tzinfo=timezone.utc))] == ["v2"]
    assert contact_key(ring.current.secret, "sys|1") == contact_key(S2, "sys|1")
