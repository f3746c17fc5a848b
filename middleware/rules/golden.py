"""Golden tests for rules: ``<name>_test.yaml`` beside ``<name>.yaml`` in ``mappings/rules/``.

Each case feeds HL7v2 messages or FHIR resources to the real pipeline on a scratch
database with a simulated clock, lets the real scheduler fire what falls due, and
compares the resulting triggers with ``expect`` (and ``expect_none``). A failure names
the case's file:line and the expectation's file:line, with expected and actual side
by side.

The pipeline lives above this layer, so the runner takes a ``Journey`` factory
(``careloop mappings test`` passes :class:`middleware.pipeline.dryrun.DryRun`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

import orjson
from pydantic import Field, ValidationError, model_validator

from ..config.yamlpos import Diagnostic, DiagnosticSink, YamlError, load_positioned, position_of, pydantic_errors_to_diagnostics
from .journeys import both_fired, format_timeline, timeline
from .load import RuleSet
from .spec import Duration, _Strict, parse_duration
from .timing import parse_fhir_datetime

Status = Literal["pending", "fired", "cancelled", "skipped", "suppressed"]


class Authorize(_Strict):
    """A recorded marketing authorization (prior express written consent), as ``POST /api/authorizations``."""

    purpose: str = "marketing"
    reference: str | None = Field(default=None, description="where the signed authorization is kept")


class OptOut(_Strict):
    """An opt-out (a suppression row), as ``POST /api/suppressions``: patient-wide unless narrowed."""

    reason: str = "opt-out"
    purpose: str | None = Field(default=None, description="only this purpose (default: every purpose)")
    destination: str | None = Field(default=None, description="only this destination (default: all)")
    source: str = Field(default="operator", description="sms-stop | unsubscribe | revocation | operator")


PRIVACY_STEPS = ("authorize", "opt_out", "suppress", "consent", "revoke")


class Step(_Strict):
    """One input, or one privacy record, at one moment. ``at`` / ``advance`` move the clock
    first (triggers due on the way fire). Privacy records apply to ``patient`` (default: the
    patient of the last input)."""

    at: datetime | None = Field(default=None, description="set the clock (ISO 8601 with offset)")
    advance: Duration | None = Field(default=None, description="move the clock forward, e.g. 2d")
    hl7: str | None = Field(default=None, description="an inline HL7v2 message, one segment per line")
    hl7_file: str | None = Field(default=None, description="path of an HL7v2 file, relative to this test file")
    fhir: dict[str, Any] | None = Field(default=None, description="an inline FHIR resource or Bundle")
    fhir_file: str | None = Field(default=None, description="path of a FHIR JSON file, relative to this test file")
    source: str = "default"
    authorize: Authorize | None = Field(default=None, description="record a marketing authorization")
    opt_out: OptOut | None = Field(default=None, description="record an opt-out (suppression)")
    suppress: OptOut | None = Field(default=None, description="record a suppression (an operator's opt-out)")
    consent: dict[str, Any] | None = Field(default=None, description="record a FHIR Consent resource")
    revoke: Literal["authorization", "opt_out", "consent"] | None = Field(
        default=None, description="revoke the patient's most recent active authorization, opt-out or consent")
    patient: str | None = Field(default=None, description="patient key for privacy records (default: the last input's)")

    @model_validator(mode="after")
    def _one_input(self) -> "Step":
        n = sum(x is not None for x in (self.hl7, self.hl7_file, self.fhir, self.fhir_file))
        n += sum(getattr(self, k) is not None for k in PRIVACY_STEPS)
        if n > 1:
            raise ValueError("a step has at most one of hl7, hl7_file, fhir, fhir_file, " + ", ".join(PRIVACY_STEPS))
        if n == 0 and self.at is None and self.advance is None:
            raise ValueError("a step needs an input (hl7, hl7_file, fhir, fhir_file), a privacy record ("
                             + ", ".join(PRIVACY_STEPS) + ") or a clock move (at, advance)")
        return self


class Expect(_Strict):
    """A trigger that must exist at the end of the case (every given field must match)."""

    rule: str
    trigger: str | None = None
    status: Status | None = None
    due: datetime | None = Field(default=None, description="due time (any offset; compared as instants)")
    payload: dict[str, Any] | None = Field(default=None, description="these payload fields must have these values")
    reason: str | None = Field(default=None, description="text the recorded reason must contain")
    flagged: bool | None = Field(default=None, description="the trigger was kept on data that could not be re-checked")


class Case(_Strict):
    name: str
    now: datetime = Field(description="the simulated clock when the case starts")
    steps: list[Step] = Field(min_length=1)
    run_until: datetime | None = Field(default=None, description="fire what is due up to here (default: 60 days after the last step)")
    expect: list[Expect] = Field(default_factory=list)
    expect_none: list[str] = Field(default_factory=list, description="rule ids that must have no pending or fired trigger")
    exhaustive: bool = Field(default=False, description="every pending/fired trigger must be matched by an `expect`")


class TestFile(_Strict):
    description: str = ""
    tests: list[Case] = Field(min_length=1)


class Journey(Protocol):
    now: datetime

    def feed(self, data: bytes, label: str, source: str = "default") -> Any: ...
    def fire_until(self, until: datetime) -> list[Any]: ...
    def triggers(self) -> list[Any]: ...
    def close(self) -> None: ...
    def record(self, kind: str, patient_key: str, data: dict[str, Any]) -> str: ...


JourneyFactory = Callable[[RuleSet, datetime], Journey]


@dataclass
class CaseResult:
    path: str
    line: int
    name: str
    failures: list[str] = field(default_factory=list)
    error: str | None = None
    timeline: list[str] = field(default_factory=list)  # journeys (rules/journeys.py) and privacy records

    @property
    def ok(self) -> bool:
        return not self.failures and self.error is None


def test_files(directory: Path) -> list[Path]:
    rdir = Path(directory) / "rules"
    return sorted(rdir.glob("*_test.yaml")) if rdir.is_dir() else []


def load_cases(path: Path) -> tuple[TestFile | None, Any, list[Diagnostic]]:
    """Parse one test file keeping positions; errors are positioned diagnostics."""
    sink = DiagnosticSink(str(path))
    try:
        raw = load_positioned(path)
    except YamlError as exc:
        return None, None, [exc.diagnostic]
    try:
        return TestFile.model_validate(raw or {}), raw, []
    except ValidationError as exc:
        exc._careloop_model = TestFile  # type: ignore[attr-defined]
        pydantic_errors_to_diagnostics(sink, raw, exc)
        return None, raw, sink.items


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _iso(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat() if ts is not None else "-"


def _describe(t: Any) -> str:
    return f"#{t.id} {t.rule_id} status={t.status} due={_iso(t.due_at)} reason={t.reason!r} payload={t.payload}"


def _matches(e: Expect, t: Any) -> list[str]:
    """Mismatched fields of trigger ``t`` against ``e`` (empty: it matches)."""
    bad = []
    if e.trigger and t.name != e.trigger:
        bad.append(f"trigger {t.name!r} != {e.trigger!r}")
    if e.status and t.status != e.status:
        bad.append(f"status {t.status} != {e.status}")
    if e.due and abs(t.due_at - _aware(e.due).timestamp()) > 0.5:
        bad.append(f"due {_iso(t.due_at)} != {_aware(e.due).astimezone(timezone.utc).isoformat()}")
    if e.reason and e.reason.lower() not in (t.reason or "").lower():
        bad.append(f"reason {t.reason!r} does not contain {e.reason!r}")
    if e.flagged is not None and bool(getattr(t, "flag", None)) != e.flagged:
        bad.append(f"flag {getattr(t, 'flag', None)!r} (flagged: {e.flagged})")
    if e.payload:
        actual = orjson.loads(t.payload or "{}")
        for k, v in e.payload.items():
            got = actual.get(k)
            same = got == v
            if not same and isinstance(v, (str, datetime)) and isinstance(got, str):
                a, b = parse_fhir_datetime(got), parse_fhir_datetime(v.isoformat() if isinstance(v, datetime) else v)
                same = a is not None and b is not None and a == b
            if not same:
                bad.append(f"payload.{k} {got!r} != {v!r}")
    return bad


def _input(step: Step, base: Path) -> tuple[bytes, str] | None:
    if step.hl7 is not None:
        return step.hl7.strip().replace("\n", "\r").encode() + b"\r", "inline hl7"
    if step.hl7_file is not None:
        return (base / step.hl7_file).read_bytes(), step.hl7_file
    if step.fhir is not None:
        return orjson.dumps(step.fhir), f"inline {step.fhir.get('resourceType')}"
    if step.fhir_file is not None:
        return (base / step.fhir_file).read_bytes(), step.fhir_file
    return None


def run_case(case: Case, raw: Any, path: Path, line: int, rs: RuleSet, factory: JourneyFactory) -> CaseResult:
    """Run one case and compare; failures carry the expectation's file:line."""
    res = CaseResult(str(path), line, case.name)
    journey = factory(rs, _aware(case.now))
    last_patient: str | None = None
    try:
        for i, step in enumerate(case.steps):
            sl, _ = position_of(raw["steps"], i)
            target = _aware(step.at) if step.at else None
            if step.advance:
                target = journey.now + timedelta(seconds=parse_duration(step.advance)[0])
            if target is not None:
                journey.fire_until(target)
            item = _input(step, path.parent)
            if item is not None:
                out = journey.feed(item[0], item[1], step.source)
                if getattr(out, "error", None):
                    res.failures.append(f"{path}:{sl}: step {i + 1} ({item[1]}) failed: {out.error}")
                last_patient = next((e.patient_key for e in reversed(getattr(getattr(out, "result", None), "events", []))
                                     if e.patient_key), last_patient)
            privacy = _privacy(step)
            if privacy is not None:
                who = step.patient or last_patient
                if who is None:
                    res.failures.append(f"{path}:{sl}: step {i + 1}: no patient for {privacy[0]} (give `patient:` "
                                        "or put it after an input)")
                    continue
                try:
                    done = journey.record(privacy[0], who, privacy[1])
                except ValueError as exc:
                    res.failures.append(f"{path}:{sl}: step {i + 1}: {exc}")
                    continue
                res.timeline.append(f"{journey.now.isoformat()}  {done} (step {i + 1})")
        journey.fire_until(_aware(case.run_until) if case.run_until else journey.now + timedelta(days=60))
        triggers = journey.triggers()
    except Exception as exc:  # a broken fixture path, an unparsable message
        res.error = f"{path}:{line}: case {case.name!r} could not run: {type(exc).__name__}: {exc}"
        return res
    finally:
        journey.close()
    used: set[int] = set()
    for j, e in enumerate(case.expect):
        el, _ = position_of(raw["expect"], j)
        cands = [t for t in triggers if t.rule_id == e.rule and t.id not in used]
        hit = next((t for t in cands if not _matches(e, t)), None)
        if hit is not None:
            used.add(hit.id)
            continue
        want = " ".join(f"{k}={v}" for k, v in e.model_dump(exclude_none=True).items())
        lines = [f"{path}:{el}: expected trigger not found", f"    - expected: {want}"]
        if not cands:
            lines.append(f"    + actual:   no trigger of rule {e.rule!r}")
        for t in cands:
            lines.append(f"    + actual:   {_describe(t)}")
            lines.append(f"                ({'; '.join(_matches(e, t))})")
        res.failures.append("\n".join(lines))
    for j, rule_id in enumerate(case.expect_none):
        el, _ = position_of(raw["expect_none"], j)
        for t in triggers:
            if t.rule_id == rule_id and t.status in ("pending", "fired"):
                res.failures.append(f"{path}:{el}: rule {rule_id!r} must not fire\n    + actual:   {_describe(t)}")
    for problem in both_fired(triggers, rs):
        res.failures.append(f"{path}:{line}: {problem}")
    res.timeline += format_timeline(timeline(triggers, rs))
    if case.exhaustive:
        for t in triggers:
            if t.id not in used and t.status in ("pending", "fired"):
                res.failures.append(f"{path}:{line}: unexpected trigger (exhaustive: true)\n    + actual:   {_describe(t)}")
    return res


def _privacy(step: Step) -> tuple[str, dict[str, Any]] | None:
    """The privacy record a step makes, as (kind, data) for ``Journey.record``."""
    if step.authorize is not None:
        return "authorization", step.authorize.model_dump()
    if step.opt_out is not None:
        return "opt_out", step.opt_out.model_dump()
    if step.suppress is not None:
        return "opt_out", step.suppress.model_dump()
    if step.consent is not None:
        return "consent", dict(step.consent)
    if step.revoke is not None:
        return "revoke", {"what": step.revoke}
    return None


def run_directory(directory: Path, rs: RuleSet, factory: JourneyFactory, *,
                  name_filter: str | None = None) -> tuple[list[CaseResult], list[Diagnostic]]:
    """Run every case of every ``*_test.yaml`` under ``directory/rules``."""
    results: list[CaseResult] = []
    diags: list[Diagnostic] = []
    for path in test_files(directory):
        spec, raw, d = load_cases(path)
        diags += d
        if spec is None:
            continue
        for i, case in enumerate(spec.tests):
            if name_filter and name_filter.lower() not in case.name.lower():
                continue
            line, _ = position_of(raw["tests"], i)
            results.append(run_case(case, raw["tests"][i], path, line, rs, factory))
    return results, diags


def json_schema() -> dict[str, Any]:
    """The published JSON Schema of a golden test file (``docs/schema/rules-test.schema.json``)."""
    schema = TestFile.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://careloop.dev/schemas/rules-test.schema.json"
    schema["title"] = "careloop rule golden tests"
    return schema
