"""Policy-aware payloads: validation says, with file:line, what each destination's policy does to each payload field."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from middleware.cli import main
from middleware.config.destinations import Policy
from middleware.config.policy import outgoing, project
from middleware.rules.load import load_ruleset

REPO = Path(__file__).resolve().parents[2]

RULE = """\
rules:
  - id: r1
    on: [encounter.finished]
    purpose: care-coordination
    emit:
      trigger: t1
      destinations: [webhook]
      payload:
PAYLOAD
    on_no_longer_matching: cancel
"""


@pytest.fixture
def mdir(tmp_path: Path) -> Path:
    dst = tmp_path / "mappings"
    shutil.copytree(REPO / "mappings", dst, ignore=shutil.ignore_patterns("*_test.yaml"))
    return dst


def findings(mdir: Path, payload: str, allow: list[str] | None = None) -> list[str]:
    if allow is not None:
        f = mdir / "destinations.yaml"
        text = f.read_text()
        start = text.index("      allow: [")
        end = text.index("\n", start)
        f.write_text(text[:start] + f"      allow: [{', '.join(allow)}]" + text[end:])
    (mdir / "rules" / "zz.yaml").write_text(RULE.replace("PAYLOAD", payload))
    rs, diags = load_ruleset(mdir)
    assert rs is not None, [str(d) for d in diags if d.level == "error"]
    return [str(d).split("/mappings/", 1)[1].replace(str(mdir.parent) + "/", "") for d in diags
            if d.path.endswith("zz.yaml") and d.code != "overlap"]  # overlap with the shipped rules: not this test's concern


def test_fields_the_policy_strips_are_warned_at_their_line(mdir):
    out = findings(mdir, "        mrn: identifier.value.first()\n        diagnosis: '%diagnoses.coding.code'\n"
                         "        patient_name: \"%patient.name.family.first()\"\n")
    assert out[0] == ("rules/zz.yaml:9:9: warning[payload-stripped] payload.mrn (an identifier): destination 'webhook' "
                      "will strip it: not in its policy.allow (mappings/destinations.yaml:10:5); add it there, drop it, "
                      "or list it in emit.internal if only conditions use it")
    assert out[1].startswith("rules/zz.yaml:10:9: warning[payload-stripped] payload.diagnosis (a diagnosis or procedure code)")
    assert out[2].startswith("rules/zz.yaml:11:9: warning[payload-stripped] payload.patient_name (a name)")
    assert len(out) == 3


def test_sensitive_fields_warn_even_when_allowed_naming_the_policy_line(mdir):
    out = findings(mdir, "        mrn: identifier.value.first()\n        dx: '%diagnoses.coding.code'\n"
                         "        dob: '%patient.birthDate'\n        discharge_date: period.end\n",
                   allow=["purpose", "mrn", "dx", "dob", "discharge_date"])
    assert out[0] == ("rules/zz.yaml:9:9: warning[payload-sensitive] payload.mrn carries an identifier to 'webhook': "
                      "allowed by its policy at mappings/destinations.yaml:13:24; minimum necessary: send a pseudonymous "
                      "contact key and non-clinical wording instead")
    assert out[1].startswith("rules/zz.yaml:10:9: warning[payload-sensitive] payload.dx carries a diagnosis or procedure code")
    # a CodeableConcept allowed by name still loses its codes in the projection
    assert out[2].startswith("rules/zz.yaml:11:9: warning[payload-sensitive] payload.dob carries a birth date")
    assert out[3] == ("rules/zz.yaml:8:7: info[dates-of-service] rule 'r1' sends dates of service to 'webhook', a BAA "
                      "destination: discharge_date (allowed at mappings/destinations.yaml:13:38); PHI, and the minimum "
                      "necessary for the contact")


def test_allowed_container_loses_its_codes(mdir):
    out = findings(mdir, "        service: serviceType\n", allow=["purpose", "service"])
    assert out == ["rules/zz.yaml:9:9: warning[payload-stripped] payload.service (a diagnosis or procedure code): destination "
                   "'webhook' will strip parts of it (coding, text): naming a container is not naming its codes "
                   "(mappings/destinations.yaml:13:24)"]


def test_internal_fields_are_not_warned_but_cannot_be_allowed(mdir):
    text = RULE.replace("      payload:", "      internal: [code_for_match]\n      payload:").replace(
        "PAYLOAD", "        code_for_match: class.code\n")
    (mdir / "rules" / "zz.yaml").write_text(text)
    rs, diags = load_ruleset(mdir)
    assert rs is not None and not [d for d in diags if d.path.endswith("zz.yaml") and d.code != "overlap"]
    f = mdir / "destinations.yaml"
    f.write_text(f.read_text().replace("allow: [purpose,", "allow: [purpose, code_for_match,"))
    rs, diags = load_ruleset(mdir)
    errs = [str(d) for d in diags if d.level == "error"]
    assert rs is None and len(errs) == 1 and "error[internal-allowed] payload.code_for_match is internal" in errs[0]


def test_shipped_rules_have_no_payload_warnings(capsys):
    assert main(["mappings", "validate", str(REPO / "mappings")]) == 0
    out = capsys.readouterr()
    assert "warning[" not in out.out + out.err
    assert "info[dates-of-service]" in out.out


def test_outgoing_is_project_or_only_a_link():
    payload = {"appointment_start": "2024-01-01T09:00:00-05:00", "mrn": "MRN123"}
    fields = outgoing(payload, Policy(allow=["appointment_start"]), "http://x/api/triggers/1")
    assert fields == project(payload, Policy(allow=["appointment_start"]))
    thin = outgoing(payload, Policy(mode="thin"), "http://x/api/triggers/1")
    assert thin.payload == {"link": "http://x/api/triggers/1"} and thin.stripped == ["appointment_start", "mrn"]
