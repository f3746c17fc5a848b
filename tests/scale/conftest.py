"""Fixtures for the scale, crash and operability tests: mappings whose no-show rule fires
at once (no delay, no quiet hours) so every SIU^S26 yields one immediate webhook."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from middleware.cli.sink import DEV_WEBHOOK_SECRET
from middleware.delivery.sink import SinkServer


def make_immediate(mappings: Path) -> Path:
    rules = mappings / "rules" / "appointments.yaml"
    text = rules.read_text()
    assert "    when: {after: 1h}\n" in text, "the bundled no-show rule changed; update tests/scale/conftest.py"
    rules.write_text(text.replace("    when: {after: 1h}\n", "", 1))
    settings = mappings / "settings.yaml"
    settings.write_text("\n".join("quiet_hours: null" if line.startswith("quiet_hours:") else line
                                  for line in settings.read_text().splitlines()) + "\n")
    return mappings


@pytest.fixture
def immediate_mappings(mappings_dir: Path) -> Path:
    return make_immediate(mappings_dir)


@pytest.fixture
def sink() -> Iterator[SinkServer]:
    with SinkServer([DEV_WEBHOOK_SECRET]) as s:
        yield s
