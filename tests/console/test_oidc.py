"""Console sign-in through OpenID Connect against real providers on loopback: ``oidc-provider-mock``
(authlib's authorization server) for the whole flow, and our own scripted provider (tests.support.oidc)
for what the mock cannot do wrong on purpose (rotated keys, another audience, an expired token...)."""
from __future__ import annotations

import html
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

from middleware.console.oidc import OidcConfigError, parse_role_map
from middleware.service import Runtime
from middleware.storage.queries import admin_audit as aq
from middleware.storage.sql import unit
from tests.support.console import client, console_runtime, write_users
from tests.support.oidc import ScriptedProvider, authorize_at_mock, mock_provider

CLIENT_ID = "careloop-console"
ROLE_MAP = "care-ops:operator,care-audit:auditor,care-admins:admin"

USERS = {
    "u-olga": {"preferred_username": "olga", "roles": ["care-ops", "unrelated-group"]},
    "u-nina": {"preferred_username": "nina", "roles": ["unrelated-group"]},
    "u-kai": {"preferred_username": "kai", "realm_access": {"roles": ["care-audit", "offline_access"]}},
}


def _runtime(db_url: str, mappings_dir: Path, tmp_path: Path, issuer: str, **settings: Any) -> Runtime:
    opts: dict[str, Any] = {"console_oidc_issuer": issuer, "console_oidc_client_id": CLIENT_ID,
                            "console_oidc_role_map": ROLE_MAP, **settings}
    return console_runtime(db_url, mappings_dir, write_users(tmp_path / "users.yaml"), **opts)


def _start(c: TestClient) -> str:
    """GET /signin/oidc: the redirect to the provider's authorization endpoint."""
    r = c.get("/signin/oidc")
    assert r.status_code == 302, r.text
    return str(r.headers["location"])


def _callback(c: TestClient, url: str) -> Any:
    parts = urlsplit(url)
    assert parts.netloc == "testserver" and parts.path == "/signin/oidc/callback", url
    return c.get(f"{parts.path}?{parts.query}")


def _audit(rt: Runtime) -> list[aq.AdminAuditRecord]:
    with unit(rt.engine) as u:
        return list(aq.page(u, limit=50, action="console.signin", actor=None, since=None, before_id=None))


@pytest.fixture
def mock_issuer() -> Iterator[str]:
    with mock_provider(USERS) as issuer:
        yield issuer


# -- oidc-provider-mock: the whole flow ----------------------------------------------------------------
def test_full_flow_signs_in_with_mapped_roles(db_url: str, mappings_dir: Path, tmp_path: Path, mock_issuer: str) -> None:
    rt = _runtime(db_url, mappings_dir, tmp_path, mock_issuer, console_oidc_client_secret="s3cret-for-tests")
    c = client(rt)
    page = c.get("/signin")
    assert 'href="/signin/oidc"' in page.text and "Sign in with 127.0.0.1" in page.text

    location = _start(c)
    q = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert location.startswith(mock_issuer + "/oauth2/authorize?")
    assert q["response_type"] == "code" and q["client_id"] == CLIENT_ID and q["code_challenge_method"] == "S256"
    assert len(q["code_challenge"]) == 43 and len(q["state"]) >= 32 and len(q["nonce"]) >= 32
    assert q["redirect_uri"] == "https://testserver/signin/oidc/callback" and q["scope"] == "openid profile email"
    assert set(q) == {"response_type", "client_id", "redirect_uri", "scope", "state", "nonce", "code_challenge",
                      "code_challenge_method"}  # no verifier, no secret in the URL
    assert c.get("/signin").headers.get_list("set-cookie") == []  # the sign-in page itself sets nothing
    assert c.cookies.get("careloop_oidc")

    r = _callback(c, authorize_at_mock(location, "u-olga"))
    assert r.status_code == 303 and r.headers["location"] == "/", r.text
    cookies = "\n".join(r.headers.get_list("set-cookie")).lower()
    assert "careloop_session=" in cookies and "samesite=strict" in cookies and "httponly" in cookies
    home = c.get("/")
    assert home.status_code == 200 and "olga" in home.text
    assert 'href="/messages"' in home.text and 'href="/privacy"' not in home.text  # operator, not auditor
    rows = _audit(rt)
    assert [(x.actor, x.role, x.outcome) for x in rows] == [("olga", "operator", "ok")]
    assert rows[0].detail is not None and '"method":"oidc"' in rows[0].detail and "eyJ" not in rows[0].detail


def test_start_sets_a_lax_handle_cookie_only(db_url: str, mappings_dir: Path, tmp_path: Path, mock_issuer: str) -> None:
    c = client(_runtime(db_url, mappings_dir, tmp_path, mock_issuer))
    r = c.get("/signin/oidc")
    cookie = r.headers["set-cookie"].lower()
    assert cookie.startswith("careloop_oidc=") and "httponly" in cookie and "secure" in cookie
    assert "samesite=lax" in cookie and "path=/signin/oidc" in cookie and "max-age=600" in cookie
    handle = cookie.split("=", 1)[1].split(";", 1)[0]
    assert handle not in str(r.headers["location"]).lower()  # the handle is not the state


def test_a_dotted_roles_claim(db_url: str, mappings_dir: Path, tmp_path: Path, mock_issuer: str) -> None:
    """Keycloak's realm roles live at realm_access.roles."""
    rt = _runtime(db_url, mappings_dir, tmp_path, mock_issuer, console_oidc_roles_claim="realm_access.roles",
                  console_oidc_client_secret="s3cret-for-tests")
    c = client(rt)
    r = _callback(c, authorize_at_mock(_start(c), "u-kai"))
    assert r.status_code == 303, r.text
    home = c.get("/")
    assert home.status_code == 200 and 'href="/privacy"' in home.text and 'href="/messages"' not in home.text


def test_a_user_without_a_mapped_role_is_refused(db_url: str, mappings_dir: Path, tmp_path: Path, mock_issuer: str) -> None:
    rt = _runtime(db_url, mappings_dir, tmp_path, mock_issuer, console_oidc_client_secret="s3cret-for-tests")
    c = client(rt)
    r = _callback(c, authorize_at_mock(_start(c), "u-nina"))
    assert r.status_code == 403 and "nina" in r.text and "holds no careloop role" in r.text
    assert "Traceback" not in r.text
    assert c.get("/").status_code == 303
    assert [(x.actor, x.outcome) for x in _audit(rt)] == [("nina", "refused")]
    assert '"reason":"no_role"' in (_audit(rt)[0].detail or "")


def test_a_replayed_callback_is_refused(db_url: str, mappings_dir: Path, tmp_path: Path, mock_issuer: str) -> None:
    rt = _runtime(db_url, mappings_dir, tmp_path, mock_issuer, console_oidc_client_secret="s3cret-for-tests")
    c = client(rt)
    location = _start(c)
    handle = c.cookies.get("careloop_oidc")
    callback = authorize_at_mock(location, "u-olga")
    assert _callback(c, callback).status_code == 303
    # the same answer again, even with the handle cookie put back: single-use
    other = client(rt)
    other.cookies.set("careloop_oidc", str(handle), domain="testserver.local", path="/signin/oidc")
    for again in (_callback(c, callback), _callback(other, callback)):
        assert again.status_code == 400 and "expired or was already used" in again.text
    assert other.get("/").status_code == 303
    assert [x.outcome for x in _audit(rt)] == ["refused", "refused", "ok"]


def test_another_state_is_refused_and_spends_the_sign_in(db_url: str, mappings_dir: Path, tmp_path: Path, mock_issuer: str) -> None:
    rt = _runtime(db_url, mappings_dir, tmp_path, mock_issuer, console_oidc_client_secret="s3cret-for-tests")
    c = client(rt)
    location = _start(c)
    callback = authorize_at_mock(location, "u-olga")
    parts = urlsplit(callback)
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    r = c.get(parts.path, params={"code": q["code"], "state": "forged-" + q["state"][7:]})
    assert r.status_code == 400 and "does not belong to your sign-in" in r.text
    assert _callback(c, callback).status_code == 400  # the pending sign-in was spent by the forged answer
    assert c.get("/").status_code == 303


def test_no_cookie_no_sign_in(db_url: str, mappings_dir: Path, tmp_path: Path, mock_issuer: str) -> None:
    """Login CSRF: an attacker's own callback URL, opened in the victim's browser (no handle cookie)."""
    rt = _runtime(db_url, mappings_dir, tmp_path, mock_issuer, console_oidc_client_secret="s3cret-for-tests")
    attacker = client(rt)
    callback = authorize_at_mock(_start(attacker), "u-olga")
    victim = client(rt)
    r = _callback(victim, callback)
    assert r.status_code == 400 and victim.get("/").status_code == 303


def test_not_configured_offers_nothing(db_url: str, mappings_dir: Path, tmp_path: Path) -> None:
    rt = console_runtime(db_url, mappings_dir, write_users(tmp_path / "users.yaml"))
    c = client(rt)
    assert "/signin/oidc" not in c.get("/signin").text
    assert c.get("/signin/oidc").status_code == 404


def test_misconfiguration_is_a_clear_page(db_url: str, mappings_dir: Path, tmp_path: Path) -> None:
    rt = _runtime(db_url, mappings_dir, tmp_path, "http://idp.example.org/realms/care")  # http beyond loopback
    r = client(rt).get("/signin/oidc")
    assert r.status_code == 503 and "misconfigured" in r.text


def test_role_map_parsing() -> None:
    assert parse_role_map("a:operator, urn:x:grp:auditor ,a:admin") == {"a": ("operator", "admin"), "urn:x:grp": ("auditor",)}
    with pytest.raises(OidcConfigError, match="unknown role 'boss'"):
        parse_role_map("a:boss")
    with pytest.raises(OidcConfigError, match="entry 1"):
        parse_role_map("justavalue")


# -- our scripted provider: what must be refused, and key rotation ----------------------------------------
@pytest.fixture
def scripted() -> Iterator[ScriptedProvider]:
    with ScriptedProvider(client_id=CLIENT_ID).serve() as p:
        yield p


def _sign_in_scripted(rt: Runtime, p: ScriptedProvider, c: TestClient | None = None) -> Any:
    c = c or client(rt)
    return _callback(c, p.authorize(_start(c)))


def _refusal(rt: Runtime) -> str:
    rows = _audit(rt)
    assert rows and rows[0].outcome == "refused"
    return rows[0].detail or ""


def test_scripted_flow_sends_pkce_and_basic_auth(db_url: str, mappings_dir: Path, tmp_path: Path, scripted: ScriptedProvider) -> None:
    rt = _runtime(db_url, mappings_dir, tmp_path, scripted.issuer, console_oidc_client_secret="a b:c")
    r = _sign_in_scripted(rt, scripted)
    assert r.status_code == 303, r.text
    sent = scripted.token_requests[-1]
    assert sent["authorization"] == "Basic Y2FyZWxvb3AtY29uc29sZTphK2IlM0Fj"  # careloop-console:a+b%3Ac (RFC 6749 2.3.1)
    assert "client_secret" not in sent["form"] and len(sent["form"]["code_verifier"]) >= 43


def test_public_client_proves_itself_with_pkce(db_url: str, mappings_dir: Path, tmp_path: Path,
                                              scripted: ScriptedProvider) -> None:
    """No secret: client_id in the form and the verifier the provider checks against the S256 challenge
    (oidc-provider-mock's authlib grant accepts secret-bearing clients only, so our provider stands in)."""
    rt = _runtime(db_url, mappings_dir, tmp_path, scripted.issuer)
    assert _sign_in_scripted(rt, scripted).status_code == 303
    sent = scripted.token_requests[-1]
    assert sent["authorization"] is None and "client_secret" not in sent["form"] and sent["form"]["client_id"] == CLIENT_ID
    # a wrong verifier is refused by the provider: shown as a refused code, not a crash
    c = client(rt)
    location = _start(c)
    scripted._codes.clear()
    callback = scripted.authorize(location)
    code = next(iter(scripted._codes))
    scripted._codes[code]["code_challenge"] = "x" * 43
    r = _callback(c, callback)
    assert r.status_code == 401 and "refused the sign-in code (invalid_grant)" in r.text


def test_client_secret_post(db_url: str, mappings_dir: Path, tmp_path: Path, scripted: ScriptedProvider) -> None:
    rt = _runtime(db_url, mappings_dir, tmp_path, scripted.issuer, console_oidc_client_secret="pw",
                  console_oidc_token_auth="client_secret_post")
    assert _sign_in_scripted(rt, scripted).status_code == 303
    sent = scripted.token_requests[-1]
    assert sent["authorization"] is None and sent["form"]["client_secret"] == "pw" and sent["form"]["client_id"] == CLIENT_ID


@pytest.mark.parametrize(("claims", "reason", "text"), [
    ({"aud": "another-client"}, "bad_aud", "'aud' claim"),
    ({"aud": [CLIENT_ID, "another-client"]}, "bad_azp", "another client (azp)"),
    ({"aud": [CLIENT_ID, "another-client"], "azp": "another-client"}, "bad_azp", "another client (azp)"),
    ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}, "expired", "has expired"),
    ({"iat": int(time.time()) + 3600}, "bad_iat", "'iat' claim"),
    ({"nbf": int(time.time()) + 3600}, "bad_nbf", "'nbf' claim"),
    ({"iss": "http://127.0.0.1:1"}, "bad_iss", "'iss' claim"),
    ({"nonce": "not-the-one-sent"}, "bad_nonce", "nonce"),
    ({"nonce": None}, "bad_nonce", "nonce"),
])
def test_id_token_claims_are_checked(db_url: str, mappings_dir: Path, tmp_path: Path, scripted: ScriptedProvider,
                                     claims: dict[str, Any], reason: str, text: str) -> None:
    rt = _runtime(db_url, mappings_dir, tmp_path, scripted.issuer)
    scripted.claims = lambda p, params: {k: v for k, v in p.default_claims(params, **claims).items() if v is not None}
    c = client(rt)
    r = _sign_in_scripted(rt, scripted, c)
    assert r.status_code == 401 and text in html.unescape(r.text) and "Traceback" not in r.text, r.text
    assert f'"reason":"{reason}"' in _refusal(rt)
    assert c.get("/").status_code == 303


def test_a_token_within_the_leeway_is_accepted(db_url: str, mappings_dir: Path, tmp_path: Path, scripted: ScriptedProvider) -> None:
    rt = _runtime(db_url, mappings_dir, tmp_path, scripted.issuer)
    scripted.claims = lambda p, params: p.default_claims(params, exp=int(time.time()) - 20, iat=int(time.time()) + 20)
    assert _sign_in_scripted(rt, scripted).status_code == 303


def test_alg_none_and_hmac_are_refused(db_url: str, mappings_dir: Path, tmp_path: Path, scripted: ScriptedProvider) -> None:
    rt = _runtime(db_url, mappings_dir, tmp_path, scripted.issuer)
    assert _sign_in_scripted(rt, scripted).status_code == 303  # the same provider, correctly signed: accepted
    scripted.alg = "none"
    r = _sign_in_scripted(rt, scripted)
    assert r.status_code == 401 and '"reason":"bad_alg"' in _refusal(rt)
    # HS256 keyed with the published RSA public key's PEM (the classic algorithm confusion)
    scripted.alg = "HS256"
    scripted.hmac_secret = scripted.keys[0].as_pem(private=False)
    r = _sign_in_scripted(rt, scripted)
    assert r.status_code == 401 and '"reason":"bad_alg"' in _refusal(rt)
    assert _audit(rt)[-1].outcome == "ok"


def test_key_rotation_refetches_the_jwks_once(db_url: str, mappings_dir: Path, tmp_path: Path, scripted: ScriptedProvider) -> None:
    rt = _runtime(db_url, mappings_dir, tmp_path, scripted.issuer)
    assert _sign_in_scripted(rt, scripted).status_code == 303
    assert scripted.jwks_requests == 1
    assert _sign_in_scripted(rt, scripted).status_code == 303
    assert scripted.jwks_requests == 1 and scripted.discovery_requests == 1  # both cached
    # the provider rotates: a new key signs, the old one is withdrawn
    new = scripted.new_key()
    scripted.keys, scripted.signing_key = [new], new
    r = _sign_in_scripted(rt, scripted)
    assert r.status_code == 303, r.text
    assert scripted.jwks_requests == 2
    # a token signed with a key the provider does not publish: one refetch, then refused
    rogue = scripted.new_key()
    scripted.signing_key = rogue
    r = _sign_in_scripted(rt, scripted)
    assert r.status_code == 401 and "does not publish" in r.text
    assert scripted.jwks_requests == 3 and '"reason":"unknown_key"' in _refusal(rt)


def test_a_forged_signature_is_refused(db_url: str, mappings_dir: Path, tmp_path: Path, scripted: ScriptedProvider) -> None:
    rt = _runtime(db_url, mappings_dir, tmp_path, scripted.issuer)
    published = scripted.keys[0]
    forger = scripted.new_key()
    # same kid as the published key, other private key
    scripted.signing_key = type(forger).import_key(forger.as_dict(private=True) | {"kid": published.kid})
    r = _sign_in_scripted(rt, scripted)
    assert r.status_code == 401 and '"reason":"bad_signature"' in _refusal(rt)


def test_issuer_mismatch_in_discovery_is_refused(db_url: str, mappings_dir: Path, tmp_path: Path, scripted: ScriptedProvider) -> None:
    scripted.discovery_issuer = "https://idp.example.org"
    rt = _runtime(db_url, mappings_dir, tmp_path, scripted.issuer)
    c = client(rt)
    r = c.get("/signin/oidc")
    assert r.status_code == 502 and "names another issuer" in r.text
    assert "careloop_oidc=" not in r.headers.get("set-cookie", "").split(";")[0] or "max-age=0" in r.headers["set-cookie"].lower()
    assert '"reason":"issuer_mismatch"' in _refusal(rt)


def test_endpoints_off_the_issuers_host_are_refused(db_url: str, mappings_dir: Path, tmp_path: Path,
                                                    scripted: ScriptedProvider) -> None:
    """A discovery document sending the code (and the secret) elsewhere: nothing is sent there."""
    scripted.token_endpoint = "http://localhost:9/token"  # loopback too, but not the issuer's host
    rt = _runtime(db_url, mappings_dir, tmp_path, scripted.issuer, console_oidc_client_secret="pw")
    r = client(rt).get("/signin/oidc")
    assert r.status_code == 502 and "not on the issuer" in html.unescape(r.text)
    assert '"reason":"foreign_host"' in _refusal(rt) and scripted.token_requests == []


def test_an_unreachable_issuer_is_a_clear_page(db_url: str, mappings_dir: Path, tmp_path: Path) -> None:
    from tests.support.server import free_port

    rt = _runtime(db_url, mappings_dir, tmp_path, f"http://127.0.0.1:{free_port()}", console_oidc_timeout_s=2)
    r = client(rt).get("/signin/oidc")
    assert r.status_code == 502 and "could not be reached" in r.text and "Traceback" not in r.text


def test_an_error_from_the_provider_is_refused(db_url: str, mappings_dir: Path, tmp_path: Path, scripted: ScriptedProvider) -> None:
    rt = _runtime(db_url, mappings_dir, tmp_path, scripted.issuer)
    c = client(rt)
    location = _start(c)
    state = parse_qs(urlsplit(location).query)["state"][0]
    r = c.get("/signin/oidc/callback", params={"error": "access_denied", "state": state})
    assert r.status_code == 401 and "(access_denied)" in r.text
    assert '"reason":"provider_error"' in _refusal(rt)


def test_pending_sign_ins_expire_and_are_single_use() -> None:
    from middleware.console.oidc import Pending, PendingStore

    now = [1000.0]
    store = PendingStore(ttl_s=600, clock=lambda: now[0])
    first = store.put(Pending("s1", "n1", "v1", "https://x/cb", created=now[0]))
    second = store.put(Pending("s2", "n2", "v2", "https://x/cb", created=now[0]))
    assert store.take(first) is not None and store.take(first) is None  # single-use
    now[0] += 601
    assert store.take(second) is None  # expired
    assert store.take("never-issued") is None
