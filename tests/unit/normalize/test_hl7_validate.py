"""hl7apy strict validation is opt-in and never raises."""
from __future__ import annotations

from hl7_helpers import load

from middleware.normalize.hl7_validate import validate_strict


def test_returns_list_and_never_raises() -> None:
    for name in ("siu_s12_v251.hl7", "adt_a08_v23.hl7", "adt_a01_v23.hl7"):
        assert isinstance(validate_strict(load(name)), list)


def test_reports_unsupported_version() -> None:
    text = load("siu_s12_v251.hl7").replace("|2.5.1\r", "|9.9\r", 1)
    problems = validate_strict(text)
    assert problems and "9.9" in problems[0]


def test_v251_fixtures_pass_hl7apy_strict() -> None:
    """The 2.5.1 fixtures follow the standard's field positions and datatypes."""
    from hl7_helpers import FIXTURES

    for path in sorted(FIXTURES.glob("*_v251.hl7")):
        assert validate_strict(load(path.name)) == [], path.name
