"""The shipped library passes its golden cases, and the published schemas are current."""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import jsonschema

from middleware.cli import main
from middleware.cli.mappings import schema_texts
from middleware.config.yamlpos import load_positioned

REPO = Path(__file__).resolve().parents[2]


def test_library_golden_cases_pass(capsys):
    assert main(["mappings", "test", str(REPO / "mappings")]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert " 0 failed" in out


def test_published_schemas_are_current():
    for name, text in schema_texts().items():
        path = REPO / "docs" / "schema" / name
        assert path.read_text() == text, f"{path} is stale: run `careloop mappings schema --write docs/schema`"


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_plain(v) for v in x]
    return x.isoformat() if isinstance(x, datetime) else x


def test_shipped_files_validate_against_the_schemas_they_reference():
    for path in sorted((REPO / "mappings" / "rules").glob("*.yaml")):
        first = path.read_text().splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema=../../docs/schema/"), path
        schema = json.loads((path.parent / first.split("=", 1)[1]).read_text())
        jsonschema.validate(_plain(load_positioned(path)), schema)
