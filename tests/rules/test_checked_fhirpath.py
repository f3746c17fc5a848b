"""Element paths in rule FHIRPath are checked against the FHIR R4 model, at file:line:col of the bad element."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from middleware.rules.check import TypeContext, check_expression, variable_types
from middleware.rules.load import load_ruleset

REPO = Path(__file__).resolve().parents[2]

ENC = """\
rules:
  - id: r1
    on: [encounter.finished]
    purpose: care-coordination
    where: WHERE
    emit: {trigger: t1, destinations: [webhook]}
    on_no_longer_matching: cancel
"""


@pytest.fixture
def mdir(tmp_path: Path) -> Path:
    dst = tmp_path / "mappings"
    shutil.copytree(REPO / "mappings", dst, ignore=shutil.ignore_patterns("*_test.yaml"))
    return dst


def errors(mdir: Path, text: str) -> list[str]:
    (mdir / "rules" / "zz.yaml").write_text(text)
    rs, diags = load_ruleset(mdir)
    out = [str(d).split("/mappings/rules/", 1)[1] for d in diags if d.path.endswith("zz.yaml") and d.level == "error"]
    assert rs is None and out
    return out


@pytest.mark.parametrize("where, expected", [
    ("class.cod = 'IMP'",
     "zz.yaml:5:18: error[unknown-element] where: Coding has no element 'cod' (did you mean 'code'?)"),
    ("hospitalisation.dischargeDisposition.exists()",
     "zz.yaml:5:12: error[unknown-element] where: Encounter has no element 'hospitalisation' (did you mean 'hospitalization'?)"),
    ("\"%patient.age >= 6\"",
     "zz.yaml:5:22: error[unknown-element] where: Patient has no element 'age'; %age is a variable of its own: "
     "the patient's age in whole years (integer); variables: %activity (CarePlan.activity), %age (integer), "
     "%context (Encounter), %diagnoses (CodeableConcept), %due (dateTime), %event ({type, previousStatus, status}), %hospice (boolean), "
     "%loinc (string), %now (dateTime), %patient (Patient), %previous (Encounter), %resource (Encounter), "
     "%sct (string), %ucum (string)"),
    ("period.end.plusDay(2).exists()",
     "zz.yaml:5:23: error[unknown-function] where: unknown function 'plusDay()' (did you mean 'plusDays()'?)"),
    ("period.end.foo.exists()",
     "zz.yaml:5:23: error[unknown-element] where: dateTime is a primitive: it has no element 'foo'"),
    ("Appointment.start.exists()",
     "zz.yaml:5:12: error[unknown-element] where: 'Appointment' names a type, but the resource here is Encounter: "
     "the path is always empty"),
    ("\"%event.stauts = 'finished'\"",
     "zz.yaml:5:20: error[unknown-element] where: %event has no element 'stauts' (did you mean 'status'?)"),
    # syntax errors: the caret is on the offending token, inside the file
    ("class.code == 'IMP'", "zz.yaml:5:24: error[fhirpath] where: FHIRPath syntax: '==' is not FHIRPath: equality is a single '='"),
    ("class.code = 'IMP' an period.exists()",
     "zz.yaml:5:31: error[fhirpath] where: FHIRPath syntax: unexpected 'an' after the expression (a missing operator such as 'and'?)"),
    ("\"class.code = 'IMP\"", "zz.yaml:5:26: error[fhirpath] where: FHIRPath syntax: unterminated string (a quote ' is not closed)"),
])
def test_bad_element_is_named_at_its_column(mdir, where, expected):
    assert expected in errors(mdir, ENC.replace("WHERE", where))


def test_folded_block_points_at_the_right_line_and_column(mdir):
    text = ENC.replace("where: WHERE", "where: >\n      class.code = 'IMP'\n      and hospitalisation.exists()\n      and %age >= 6")
    errs = errors(mdir, text)
    assert any(e.startswith("zz.yaml:7:11: error[unknown-element]") and "hospitalization" in e for e in errs), errs
    text = ENC.replace("where: WHERE", "where: >\n      class.code = 'IMP'\n      and %age >=\n")
    assert errors(mdir, text) == ["zz.yaml:7:18: error[fhirpath] where: FHIRPath syntax: the expression ends where an expression should be"]


def test_payload_unless_and_wait_for_are_checked_in_their_own_context(mdir):
    text = """\
rules:
  - id: r1
    on: [encounter.finished]
    purpose: care-coordination
    wait_for:
      events: [appointment.booked]
      timeout: 2d
      where: start > %origin.period.ned and %payload.dischage.exists()
    unless:
      - on: [encounter.arrived]
        where: class.cod = 'IMP'
    emit:
      trigger: t1
      destinations: [webhook]
      payload: {discharge: period.edn}
    on_no_longer_matching: cancel
"""
    errs = errors(mdir, text)
    assert "zz.yaml:8:37: error[unknown-element] wait_for.where: Period has no element 'ned' (did you mean 'end'?)" in errs
    assert any(e.startswith("zz.yaml:8:54:") and "%payload has no element 'dischage' (did you mean 'discharge'?)" in e for e in errs), errs
    assert "zz.yaml:11:22: error[unknown-element] unless.where: Coding has no element 'cod' (did you mean 'code'?)" in errs
    assert "zz.yaml:15:35: error[unknown-element] payload.discharge: Period has no element 'edn' (did you mean 'end'?)" in errs


def test_unknown_variable_lists_the_typed_variables(mdir):
    errs = errors(mdir, ENC.replace("WHERE", "\"%pateint.birthDate.exists() and %foo > 1\""))
    assert any("unknown variable %pateint (did you mean %patient?)" in e for e in errs), errs
    foo = next(e for e in errs if "%foo" in e)
    assert "%age (integer)" in foo and "%patient (Patient)" in foo and "%activity (CarePlan.activity)" in foo


@pytest.mark.parametrize("expr, context", [
    ("%activity.detail.scheduled.end", "CarePlan"),  # choice element: Timing | Period | string
    ("%activity.detail.scheduledPeriod.start", "CarePlan"),
    ("onset.ofType(Period).start.exists()", "Condition"),
    ("(onset as Period).start.exists()", "Condition"),
    ("%patient.deceased.exists() or %patient.deceasedBoolean", "Encounter"),
    ("%patient.extension.where(url = 'x').valueCode", "Encounter"),
    ("participant.actor.where(type = 'Location').display.first()", "Appointment"),
    ("iif(start.exists(), start, end)", "Appointment"),
    ("Appointment.serviceType.coding.display", "Appointment"),
    ("period.end.plusBusinessDays(2).localDate()", "Encounter"),
    ("%diagnoses.coding.code", "Encounter"),
    ("hospitalization.dischargeDisposition.where(memberOf('x')).empty()", "Encounter"),
    ("contained.where(resourceType = 'Condition').code", "Encounter"),  # any resource: not checked
    ("meta.lastUpdated", "Encounter"),
    ("participant.actor.union(participant.actor).display", "Appointment"),  # union's argument is read at the root
    ("status in ('booked' | 'arrived')", "Appointment"),
])
def test_valid_paths_pass(expr, context):
    assert check_expression(expr, [context], variable_types([context])) == []


def test_of_type_narrows_and_is_checked():
    probs = check_expression("contained.ofType(Condition).cod", ["Encounter"], variable_types(["Encounter"]))
    assert [p.message for p in probs] == ["Condition has no element 'cod' (did you mean 'code'?)"]
    assert check_expression("class.code.hasValue()", ["Encounter"])[0].message == "unknown function 'hasValue()'"


def test_choice_type_suggestion():
    probs = check_expression("onsetDate.exists()", ["Condition"], variable_types(["Condition"]))
    assert probs and "did you mean 'onsetDateTime'" in probs[0].message and probs[0].offset == 0
    probs = check_expression("%activity.detail.schedule.start", ["CarePlan"], variable_types(["CarePlan"]))
    assert "did you mean 'scheduled'" in probs[0].message and probs[0].offset == 17


def test_every_shipped_expression_checks_clean():
    rs, diags = load_ruleset(REPO / "mappings")
    assert rs is not None, [str(d) for d in diags]
    assert not [d for d in diags if d.level == "error"]


def test_cancel_context_types_origin_and_payload():
    tc = TypeContext.for_rule(["encounter.finished"], ["discharge_date"]).cancelling(["appointment.booked"])
    assert tc.check("start > %origin.period.end and %payload.discharge_date.exists()") == []
    assert tc.check("%origin.start.exists()")[0].message.startswith("Encounter has no element 'start'")


def test_choice_notation_from_the_spec_is_explained(mdir):
    text = ENC.replace("on: [encounter.finished]", "on: [careplan.activity.scheduled]").replace(
        "WHERE", "\"%activity.detail.scheduled[x].exists()\"")
    errs = errors(mdir, text)
    assert errs == ["zz.yaml:5:30: error[choice-notation] where: 'scheduled[x]' is the FHIR specification's notation; "
                    "in FHIRPath write 'scheduled' (any type), 'scheduled.ofType(Period)' or one of scheduledPeriod, "
                    "scheduledString, scheduledTiming"]
