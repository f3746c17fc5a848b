"""The real pipeline on a temporary SQLite database, for delivery and privacy tests.

HL7 fixtures → ``InboundMessage`` rows → :class:`Processor` → :class:`Scheduler` →
:class:`DeliveryWorker`, with mappings copied from the repo and rewritten so every
rule routes to the destinations under test. Vendor APIs are mocked with respx by
the caller; the webhook goes to a real loopback :class:`SinkServer`.
"""
from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import httpx
import yaml
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from middleware.delivery.audit import guard_append_only
from middleware.delivery.registry import SecretSource
from middleware.delivery.signing import generate_secret
from middleware.delivery.worker import DeliveryWorker
from middleware.pipeline.process import Processor
from middleware.rules.load import RuleSet, load_ruleset
from middleware.scheduler.runner import Scheduler
from middleware.storage.db import init_db, make_engine
from middleware.storage.tables import InboundMessage

REPO = Path(__file__).resolve().parents[2]
HL7_DIR = REPO / "tests" / "fixtures" / "hl7"
WEBHOOK_SECRET = generate_secret()
CONTACT_SECRET = "test-contact-key-secret"

SECRETS = SecretSource({
    "HOOK_SECRET": WEBHOOK_SECRET, "SFMC_ID": "sfmc-client", "SFMC_SECRET": "sfmc-secret", "HS_TOKEN": "hs-token",
    "BRAZE_KEY": "braze-key", "SEG_KEY": "seg-key", "ITER_KEY": "iter-key",
})

VENDORS = {
    "sfmc": {"subdomain": "mc-test", "client_id_env": "SFMC_ID", "client_secret_env": "SFMC_SECRET",
             "event_definition_key": "APIEvent-careloop", "rest_instance_url": "https://mc-test.rest.marketingcloudapis.com"},
    "hubspot": {"access_token_env": "HS_TOKEN", "event_name": "pe123_careloop", "identity": "utk"},
    "braze": {"rest_endpoint": "https://rest.iad-01.braze.com", "api_key_env": "BRAZE_KEY"},
    "segment": {"write_key_env": "SEG_KEY"},
    "iterable": {"api_key_env": "ITER_KEY"},
}

DEFAULT_ALLOW = ["purpose", "appointment_start", "appointment_service", "location", "discharge_date", "due_by",
                 "careplan_title"]


def hl7_fixture_names() -> list[str]:
    return sorted(p.name for p in HL7_DIR.glob("*.hl7"))


def hl7_bytes(name: str) -> bytes:
    data = (HL7_DIR / name).read_bytes()
    return data.replace(b"\r\n", b"\r").replace(b"\n", b"\r").strip(b"\r") + b"\r"


def destination(name: str, type_: str, *, webhook_url: str = "http://127.0.0.1:9/hooks", policy: dict[str, Any] | None = None,
                **extra: Any) -> dict[str, Any]:
    config = {"url": webhook_url, "secret_env": "HOOK_SECRET"} if type_ == "webhook" else dict(VENDORS[type_])
    if type_ == "webhook":  # test receivers listen on loopback (outbound policy)
        extra.setdefault("allow_private_network", True)
    return {"name": name, "type": type_, "baa": True, "policy": policy or {"mode": "fields", "allow": DEFAULT_ALLOW},
            "config": config, **extra}


def all_destinations(webhook_url: str, policy: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return [destination("webhook", "webhook", webhook_url=webhook_url, policy=policy)] + [
        destination(t, t, policy=policy) for t in VENDORS
    ]


def write_mappings(tmp: Path, dests: list[dict[str, Any]], *, extra_rules: dict[str, Any] | None = None,
                   route_to: list[str] | None = None) -> Path:
    """A copy of the repo mappings: these destinations, every rule routed to ``route_to`` (default: all), no caps."""
    dst = tmp / "mappings"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(REPO / "mappings", dst)
    (dst / "destinations.yaml").write_text(yaml.safe_dump({"destinations": dests}, sort_keys=False))
    names = route_to or [d["name"] for d in dests]
    for f in (dst / "rules").glob("*.yaml"):  # text edit: YAML 1.1 would read the `on:` keys as True
        text = re.sub(r"destinations: \[[^\]]*\]", "destinations: [" + ", ".join(names) + "]", f.read_text())
        f.write_text(text)
    if extra_rules:
        for r in extra_rules.get("rules", []):
            r["emit"]["destinations"] = names
        (dst / "rules" / "zz_extra.yaml").write_text(yaml.safe_dump(extra_rules, sort_keys=False))
    settings = yaml.safe_load((dst / "settings.yaml").read_text())
    settings["caps"] = {"per_day": 1000, "per_week": 1000}
    settings["treatment_caps"] = {"per_day": 1000, "per_week": 1000}
    settings["quiet_hours"] = None
    (dst / "settings.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    return dst


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


@dataclass
class Pipeline:
    engine: Engine
    rs: RuleSet
    clock: Clock
    processor: Processor
    scheduler: Scheduler
    db_url: str
    mappings: Path

    def ruleset(self) -> RuleSet:
        return self.rs

    def ingest(self, names_or_bytes: list[str | bytes], source: str = "default") -> int:
        with Session(self.engine) as s:
            for item in names_or_bytes:
                raw = hl7_bytes(item) if isinstance(item, str) else item
                s.add(InboundMessage(source=source, channel="mllp", received_at=self.clock().timestamp(), raw=raw,
                                     sha256=hashlib.sha256(raw).hexdigest(), status="received"))
            s.commit()
        return self.processor.drain()

    def fire(self, after: timedelta = timedelta(days=400)) -> int:
        """Advance the clock by ``after`` (at least to the real now: webhook signatures carry real time) and fire."""
        self.clock.now = max(self.clock.now + after, datetime.now(timezone.utc))
        n = 0
        while True:
            k = self.scheduler.fire_due()
            n += k
            if not k:
                return n

    def worker(self, http: httpx.AsyncClient | None = None, **kw: Any) -> DeliveryWorker:
        return DeliveryWorker(self.engine, self.ruleset, contact_secret=CONTACT_SECRET, clock=self.clock, http=http,
                              secrets=SECRETS, **kw)

    def deliver(self, worker: DeliveryWorker, rounds: int = 50) -> int:
        async def go() -> int:
            total = 0
            for _ in range(rounds):
                n = await worker.run_once()
                total += n
                if not n:
                    break
            return total
        return asyncio.run(go())

    def rows(self, model: Any, *where: Any) -> list[Any]:
        with Session(self.engine) as s:
            return list(s.exec(select(model).where(*where)) if where else s.exec(select(model)))


def make_pipeline(url: str, mappings: Path, *, start: datetime | None = None,
                  clock: Clock | None = None) -> Pipeline:
    """The pipeline on the (new) database at ``url``: the test's ``db_url`` fixture."""
    rs, diags = load_ruleset(mappings)
    assert rs is not None, "\n".join(str(d) for d in diags)
    engine = make_engine(url)
    init_db(engine)
    guard_append_only()
    clock = clock or Clock(start or datetime(2024, 1, 1, tzinfo=timezone.utc))
    get: Callable[[], RuleSet] = lambda: rs  # noqa: E731
    return Pipeline(engine, rs, clock, Processor(engine, get, clock=clock), Scheduler(engine, get, clock=clock), url, mappings)
