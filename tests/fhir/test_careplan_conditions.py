"""``%conditions``: a CarePlan's ``addresses`` read from a real FHIR server on loopback
(tests/fhir/fhir_stub.py) before the processor takes the write lock, cached with a TTL, gated by
the outbound policy, for ``memberOf`` checks; when they cannot be read, a rule using them
cannot be evaluated (it neither fires nor counts as false, and cancels nothing)."""
from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import orjson
import pytest
from sqlmodel import Session, select

from middleware.storage.sql import unit

from middleware.listeners.fhir_fetch import FhirFetcher
from middleware.model import InboundItem
from middleware.pipeline.fhir_handler import FhirHandler
from middleware.pipeline.process import Processor
from middleware.rules.load import RuleSet, load_ruleset
from middleware.storage.db import init_db, make_engine
from middleware.storage.tables import InboundMessage, TriggerRow
from tests.fhir.fhir_stub import FhirStub

NOW = datetime.now(timezone.utc)
SCT = "http://snomed.info/sct"
RULE = """
  - id: careplan-diabetes-enrollment
    description: A diabetes care plan became active.
    on: [careplan.active]
    where: "%conditions.code.memberOf('diabetes')"
    purpose: care-coordination
    on_no_longer_matching: cancel
    channel: email
    emit: {trigger: diabetes_enrollment, destinations: [webhook], payload: {careplan_title: title}}
"""


class Planner:
    """The reconciler's planner role with a real fetcher per source (real HTTP)."""

    def __init__(self, rs: RuleSet) -> None:
        self.rs = rs
        self._fetchers: dict[str, Any] = {}

    def request_sweep(self, source: str, types: Sequence[str], arrival: str, reason: str) -> None: ...
    def request_read(self, source: str, rtype: str, rid: str, arrival: str) -> None: ...

    def fetcher(self, source: str) -> Any:
        if source not in self._fetchers:
            self._fetchers[source] = FhirFetcher.for_source(self.rs.sources.by_name[source], timeout_s=2.0)
        return self._fetchers[source]

    def sources(self) -> Any:
        return self.rs.sources


@pytest.fixture
def stub() -> Iterator[FhirStub]:
    with FhirStub() as s:
        s.put({"resourceType": "Condition", "id": "dm", "code": {"coding": [{"system": SCT, "code": "44054006"}]}})
        s.put({"resourceType": "Condition", "id": "htn", "code": {"coding": [{"system": SCT, "code": "38341003"}]}})
        yield s


def _mappings(m: Path, base: str) -> RuleSet:
    (m / "valuesets" / "diabetes.yaml").write_text(
        f"valueset: diabetes\ndescription: Diabetes mellitus type 2 (synthetic test list).\n"
        f"codes:\n  - {{system: {SCT}, code: '44054006'}}\n")
    p = m / "rules" / "careplans.yaml"
    p.write_text(p.read_text().rstrip("\n") + "\n" + RULE)
    src = m / "sources.yaml"
    src.write_text(src.read_text().replace("${CARELOOP_FHIR_BASE_URL:-http://127.0.0.1:8090/fhir}", base))
    rs, diags = load_ruleset(m)
    assert rs is not None, [str(d) for d in diags]
    return rs


def _plan(pid: str, *refs: str, contained: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    plan: dict[str, Any] = {"resourceType": "CarePlan", "id": pid, "status": "active", "intent": "plan",
                            "title": "Care plan", "subject": {"reference": "Patient/p1"},
                            "addresses": [{"reference": r} for r in refs]}
    if contained:
        plan["contained"] = contained
    return plan


def _item(i: int, plan: dict[str, Any]) -> InboundItem:
    return InboundItem(id=i, source="default", channel="fhir", raw=orjson.dumps(plan),
                       meta=orjson.dumps({"kind": "resource", "arrival": "notification"}).decode())


def _decide(h: FhirHandler, engine: Any, rs: RuleSet, item: InboundItem) -> Any:
    """The processor's two phases: prefetch (network, no lock), then the handler in a transaction."""
    h.prefetch(item)
    with unit(engine, write=True) as s:
        res = h(s, item, rs, NOW)
        s.commit()
    (ev, decisions), = [(e, d) for e, d in res.decisions if e.type == "careplan.active"]
    return next(d for d in decisions if d.rule_id == "careplan-diabetes-enrollment")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    url = f"sqlite:///{tmp_path}/c.db" if request.param == "sqlite" else str(request.getfixturevalue("postgres_url"))
    e = make_engine(url)
    init_db(e)
    yield e
    e.dispose()


def test_conditions_are_read_before_the_lock_and_checked_with_member_of(stub, mappings_dir, engine):
    rs = _mappings(mappings_dir, stub.base)
    h = FhirHandler(Planner(rs))
    item = _item(1, _plan("cp1", "Condition/htn", f"{stub.base}/Condition/dm"))
    h.prefetch(item)
    assert sorted(p for p in stub.requests if "Condition" in p) == ["/fhir/Condition/dm", "/fhir/Condition/htn"]
    stub.requests.clear()
    with unit(engine, write=True) as s:
        res = h(s, item, rs, NOW)
        s.commit()
    assert not [p for p in stub.requests if "Condition" in p]  # inside the transaction: the cache only
    d = next(d for _, ds in res.decisions for d in ds if d.rule_id == "careplan-diabetes-enrollment")
    assert d.fired and d.status == "pending", d.reason
    # a plan for hypertension only: where is false (evaluated, not unevaluable)
    d = _decide(h, engine, rs, _item(2, _plan("cp2", "Condition/htn")))
    assert not d.fired and d.status is None and d.reason.startswith("where is false")
    # a contained Condition needs no read
    d = _decide(h, engine, rs, _item(3, _plan("cp3", "#c", contained=[
        {"resourceType": "Condition", "id": "c", "code": {"coding": [{"system": SCT, "code": "44054006"}]}}])))
    assert d.fired


def test_cached_for_the_ttl_then_read_again(stub, mappings_dir, engine):
    rs = _mappings(mappings_dir, stub.base)
    h = FhirHandler(Planner(rs))
    clock = [1000.0]
    h.conditions.clock = lambda: clock[0]
    assert _decide(h, engine, rs, _item(1, _plan("cp1", "Condition/dm"))).fired
    assert _decide(h, engine, rs, _item(2, _plan("cp2", "Condition/dm"))).fired
    assert stub.requests.count("/fhir/Condition/dm") == 1  # the second plan used the cache
    clock[0] += h.conditions.ttl_s + 1
    stub.put({"resourceType": "Condition", "id": "dm", "code": {"coding": [{"system": SCT, "code": "38341003"}]}})
    d = _decide(h, engine, rs, _item(3, _plan("cp3", "Condition/dm")))
    assert stub.requests.count("/fhir/Condition/dm") == 2 and not d.fired  # read again: now another code


def test_unreadable_conditions_make_the_rule_unevaluable_not_false(stub, mappings_dir, engine):
    rs = _mappings(mappings_dir, stub.base)
    h = FhirHandler(Planner(rs))
    stub.fail = [(500, {})] * 20  # the server fails every read (after the fetcher's retries)
    d = _decide(h, engine, rs, _item(1, _plan("cp1", "Condition/dm")))
    assert not d.fired and d.status == "unevaluable"
    assert d.reason.startswith("cannot be evaluated: %conditions: Condition/dm could not be read from source default")
    # the source is not asked again for a while: the next plan is unevaluable at once
    stub.fail, before = [], len(stub.requests)
    d = _decide(h, engine, rs, _item(2, _plan("cp2", "Condition/dm")))
    assert d.status == "unevaluable" and len(stub.requests) == before
    # a rule that does not use %conditions is not affected
    with Session(engine) as s:
        assert "careplan-enrollment" in {t.rule_id for t in s.exec(select(TriggerRow))}


def test_the_outbound_policy_gates_the_reads(stub, mappings_dir, engine):
    rs = _mappings(mappings_dir, stub.base)
    planner = Planner(rs)
    # the policy is checked again at connect time (a name that now resolves to loopback, say):
    # a fetcher whose policy refuses private addresses never reaches the server
    planner._fetchers["default"] = FhirFetcher(stub.base, timeout_s=2.0, allow_private_network=False)
    h = FhirHandler(planner)
    h._cache("default", "p1", "default|Patient/p1")  # the patient is known: the Condition is the first read
    d = _decide(h, engine, rs, _item(1, _plan("cp1", "Condition/dm")))
    assert d.status == "unevaluable" and not [p for p in stub.requests if "Condition" in p]
    assert "could not be read" in d.reason and ("loopback" in d.reason or "private" in d.reason), d.reason


def test_processor_prefetches_and_fires(stub, mappings_dir, engine):
    rs = _mappings(mappings_dir, stub.base)
    h = FhirHandler(Planner(rs))
    with Session(engine) as s:
        for pid, ref in (("cp1", "Condition/dm"), ("cp2", "Condition/htn")):
            raw = orjson.dumps(_plan(pid, ref))
            s.add(InboundMessage(source="default", channel="fhir", received_at=NOW.timestamp(), raw=raw,
                                 sha256=hashlib.sha256(raw).hexdigest(), status="received",
                                 meta=orjson.dumps({"kind": "resource", "arrival": "notification"}).decode()))
        s.commit()
    assert Processor(engine, lambda: rs, handlers={"fhir": h}, clock=lambda: NOW).drain() == 2
    with Session(engine) as s:
        fired = [t.resource_key for t in s.exec(select(TriggerRow).where(TriggerRow.rule_id == "careplan-diabetes-enrollment"))]
    assert fired == ["CarePlan/cp1"]


def test_reprocess_evaluates_again_once_the_source_answers(stub, mappings_dir, engine, monkeypatch, capsys):
    from middleware.cli import main as cli

    rs = _mappings(mappings_dir, stub.base)
    h = FhirHandler(Planner(rs))
    stub.fail = [(503, {})] * 40  # down while the plan arrives: unevaluable, nothing fired
    assert _decide(h, engine, rs, _item(1, _plan("cp1", "Condition/dm"))).status == "unevaluable"
    stub.fail = []
    monkeypatch.delenv("CARELOOP_DATABASE_URL", raising=False)
    db = ["--database", engine.url.render_as_string(hide_password=False), "--mappings", str(mappings_dir), "--rule", "careplan-diabetes-enrollment"]
    assert cli(["reprocess", *db]) == 0
    out = capsys.readouterr().out
    assert "would create 1 trigger(s) (1 pending" in out and "careplan-diabetes-enrollment" in out, out
    assert "/fhir/Condition/dm" in stub.requests  # read by the replay (before its transaction)
    assert cli(["reprocess", "--apply", *db]) == 0
    with Session(engine) as s:
        assert [t.resource_key for t in s.exec(select(TriggerRow).where(
            TriggerRow.rule_id == "careplan-diabetes-enrollment"))] == ["CarePlan/cp1"]
