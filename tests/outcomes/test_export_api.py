"""The patient-level outcome export over the API (issue 14): API tokens with roles
(``CARELOOP_API_TOKEN_ROLES``), the de-identified export for ``journeys``, the limited data set
only with ``export.lds`` and a data use agreement reference, and every export (allowed or
refused) in the admin audit with that reference. SQLite and PostgreSQL."""
from __future__ import annotations

import csv
import re
import io
from typing import Any

import pytest
from fastapi.testclient import TestClient

from middleware.api.app import create_app
from middleware.api.authn import token_grants
from middleware.cli._secrets import malformed_secrets
from middleware.config.roles import ALL_PERMISSIONS, EXPORT_LDS, JOURNEYS
from middleware.delivery.admin_audit import query as audit_query
from middleware.service import Runtime
from middleware.settings import Settings, api_token_roles_map
from middleware.storage.db import init_db, make_engine
from tests.conftest import REPO
from tests.outcomes.test_report import seed

TOKENS = {"ana": "ana-token-0123456789abcdef0123456789", "lds": "lds-token-0123456789abcdef0123456789",
          "ops": "ops-token-0123456789abcdef0123456789", "root": "root-token-0123456789abcdef012345678"}
ROLES = "ana:analyst, lds:analyst+export.lds, ops:operator"  # root: no entry, full access as before roles
URL = "/api/reports/outcomes/noshow-14d/export"


def settings(db_url: str, **kw: Any) -> Settings:
    return Settings(database_url=db_url, mappings_dir=REPO / "mappings", contact_key_secret="export-test-secret-0123456789abcdef",
                    **kw)


@pytest.fixture
def client(db_url: str) -> Any:
    engine = make_engine(db_url)
    init_db(engine)
    seed(engine, "treated", "achieved", 3, 0)
    seed(engine, "held_out", "missed", 2, 100)
    engine.dispose()
    rt = Runtime(settings(db_url, api_tokens=",".join(f"{k}:{v}" for k, v in TOKENS.items()), api_token_roles=ROLES))
    with TestClient(create_app(rt)) as c:
        c.engine = rt.engine  # type: ignore[attr-defined]
        yield c


def as_(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


def audit(client: Any) -> list[dict[str, Any]]:
    items, _ = audit_query(client.engine, action=None, actor=None, since=None, before_id=None, limit=50)
    return [i for i in items if str(i["action"]).startswith("outcomes.export")]


def test_deidentified_export_for_journeys_readers_audited(client: Any) -> None:
    got = client.get(URL, headers=as_("ana"))
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/csv")
    assert got.headers["cache-control"] == "no-store" and "attachment" in got.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(got.text)))
    assert len(rows) == 5 and "anchor_date" not in rows[0] and {r["arm"] for r in rows} == {"treated", "held_out"}
    assert "pk0" not in got.text and "Appointment/" not in got.text
    (a,) = audit(client)
    assert (a["actor"], a["role"], a["channel"], a["action"], a["outcome"], a["target_id"], a["reason"]) == (
        "ana", "analyst", "api", "outcomes.export", "ok", "noshow-14d", None)
    assert a["detail"] == {"limited_data_set": False, "rows": 5}
    # an operator token reads no patient-level outcomes
    refused = client.get(URL, headers=as_("ops"))
    assert refused.status_code == 403 and "'journeys' permission" in refused.json()["detail"]
    assert audit(client)[0]["outcome"] == "refused" and audit(client)[0]["actor"] == "ops"


def test_limited_data_set_needs_the_permission_and_a_dua(client: Any) -> None:
    no_perm = client.get(URL + "?limited_data_set=true&dua=DUA-2026-7", headers=as_("ana"))
    assert no_perm.status_code == 403 and "'export.lds' permission" in no_perm.json()["detail"]
    no_dua = client.get(URL + "?limited_data_set=true", headers=as_("lds"))
    assert no_dua.status_code == 422 and "data use agreement" in no_dua.json()["detail"]
    blank = client.get(URL + "?limited_data_set=true&dua=%20", headers=as_("lds"))
    assert blank.status_code == 422
    ok = client.get(URL + "?limited_data_set=true&dua=DUA-2026-7", headers=as_("lds"))
    assert ok.status_code == 200 and ok.text.splitlines()[0].endswith("anchor_date,outcome_date")
    assert "lds" in ok.headers["content-disposition"]
    compat = client.get(URL + "?limited_data_set=true&dua=DUA-2026-8", headers=as_("root"))  # no roles entry: admin
    assert compat.status_code == 200
    got = [(a["actor"], a["role"], a["action"], a["outcome"], a["reason"]) for a in reversed(audit(client))]
    assert got == [("ana", "analyst", "outcomes.export_lds", "refused", "DUA-2026-7"),
                   ("lds", "analyst", "outcomes.export_lds", "refused", None),
                   ("lds", "analyst", "outcomes.export_lds", "refused", None),
                   ("lds", "analyst", "outcomes.export_lds", "ok", "DUA-2026-7"),
                   ("root", "admin", "outcomes.export_lds", "ok", "DUA-2026-8")]
    assert audit(client)[1]["detail"] == {"limited_data_set": True, "rows": 5}
    assert client.get(URL + "?limited_data_set=true&dua=D", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/api/reports/outcomes/nope/export", headers=as_("ana")).status_code == 404


def test_token_roles_setting(db_url: str) -> None:
    s = settings(db_url, api_tokens=",".join(f"{k}:{v}" for k, v in TOKENS.items()), api_token_roles=ROLES)
    assert api_token_roles_map(s) == {"ana": ("analyst",), "lds": ("analyst", "export.lds"), "ops": ("operator",)}
    grants = token_grants(s)
    assert JOURNEYS in grants["ana"][1] and EXPORT_LDS not in grants["ana"][1]
    assert EXPORT_LDS in grants["lds"][1] and grants["lds"][0] == ("analyst",)
    assert "root" not in grants and ALL_PERMISSIONS >= grants["ops"][1]
    for bad, message in (("ana", "not 'name:role+role+permission'"), ("ana:analyst+", "not 'name:role+role+permission'"),
                         ("ana:analist", "unknown role or permission 'analist'"), ("eve:analyst", "'eve', which is no token"),
                         ("ana:analyst,ana:admin", "repeats token 'ana'")):
        bad_settings = settings(db_url, api_tokens=f"ana:{TOKENS['ana']}", api_token_roles=bad)
        with pytest.raises(ValueError, match=re.escape(message)):
            token_grants(bad_settings)
        assert any(message.strip("'") in p for p in malformed_secrets(bad_settings))  # serve refuses to start


def test_loopback_without_tokens_keeps_full_access(db_url: str) -> None:
    engine = make_engine(db_url)
    init_db(engine)
    seed(engine, "treated", "achieved", 1, 0)
    engine.dispose()
    rt = Runtime(settings(db_url))
    with TestClient(create_app(rt)) as c:
        assert c.get(URL + "?limited_data_set=true&dua=DUA-1").status_code == 200
