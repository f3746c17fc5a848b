"""A sandbox careloop database belongs to one FHIR server (one ``sandbox up`` run)."""
from __future__ import annotations

from pathlib import Path

import pytest

from middleware.sandbox import server_state


@pytest.mark.sqlite_only  # the sandbox's own database is an embedded SQLite file, moved aside as a file
def test_same_server_keeps_the_database_another_moves_it_aside(tmp_path: Path) -> None:
    db = tmp_path / "careloop.db"
    url = f"sqlite:///{db}"
    assert server_state.claim(url, "run:aaaa1111", own_database=True) is None
    assert server_state.recorded(url) == "run:aaaa1111"
    assert server_state.claim(url, "run:aaaa1111", own_database=True) is None  # seeding again: same database
    note = server_state.claim(url, "run:bbbb2222", own_database=True)
    assert note and "run:aaaa1111" in note
    assert (tmp_path / "careloop.aaaa1111.db").exists()
    assert server_state.recorded(url) == "run:bbbb2222"


def test_a_database_given_explicitly_is_never_moved(tmp_path: Path, db_url: str) -> None:
    url = db_url
    server_state.claim(url, "url:http://127.0.0.1:1/fhir", own_database=False)
    with pytest.raises(server_state.ServerMismatch, match="another FHIR server"):
        server_state.claim(url, "run:cccc3333", own_database=False)
    assert server_state.recorded(url) == "url:http://127.0.0.1:1/fhir"
    if url.startswith("sqlite"):
        assert [p.name for p in tmp_path.iterdir() if p.suffix == ".db"] == ["careloop.db"]
