"""Process settings from environment (``CARELOOP_*``) and CLI flags.

Nothing is built at import time: call :func:`get_settings` (or construct
:class:`Settings` with overrides) where a value is needed.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


#: Development default of ``CARELOOP_CONTACT_KEY_SECRET``; published, so refused beyond loopback.
DEV_CONTACT_KEY_SECRET = "careloop-dev-contact-key-secret"


class Settings(BaseSettings):
    """Runtime settings; every field can be set as ``CARELOOP_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="CARELOOP_", extra="ignore")

    database_url: str = Field(default="sqlite:///.careloop/careloop.db", description=(
        "sqlite:///PATH, postgresql://... or a plain SQLite file path; the default (relative to the current "
        "folder) is created only by `serve`, every other command refuses a missing or empty database"))
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    mllp_host: str = "127.0.0.1"
    mllp_port: int = 2575
    mappings_dir: Path = Path("mappings")
    api_token: str | None = Field(default=None, description="bearer token for /api and /hl7v2 (actor name 'api')")
    api_tokens: str | None = Field(
        default=None, description="named bearer tokens 'name:token,name:token'; the name is the admin-audit actor")
    api_token_roles: str | None = Field(
        default=None, description=(
            "roles and extra permissions of named API tokens 'name:role+role+permission,...' (roles analyst, operator, "
            "auditor, admin; permissions e.g. export.lds); a token without an entry keeps full access (admin)"))
    contact_key_secret: str = Field(
        default=DEV_CONTACT_KEY_SECRET,
        description="HMAC key for pseudonymous contact keys (version v1); set a real secret in production",
    )
    contact_key_secrets: str | None = Field(
        default=None,
        description="versioned contact-key secrets 'v2:<secret>,v1:<secret>@2027-06-30'; first is current, "
                    "each older one is valid for lookups until its date",
    )
    http_max_hl7_bytes: int = Field(default=1_048_576, description="largest POST /hl7v2 body; larger is refused with 413")
    http_max_fhir_bytes: int = Field(default=10 * 1_048_576, description="largest /fhir/{source} body; larger is refused with 413")
    http_max_api_bytes: int = Field(default=1_048_576, description="largest /api request body; larger is refused with 413")
    auth_fail_limit: int = Field(default=10, description="failed authentications per client address before 429")
    auth_fail_window_s: float = Field(default=60.0, description="window for auth_fail_limit, seconds")
    mllp_max_message_bytes: int = 1_048_576
    mllp_idle_timeout_s: float = 600.0
    hl7_max_batch_bytes: int = Field(default=16_777_216, description="largest HL7 batch/file (FHS/BHS), one MLLP frame or /hl7v2 body")
    hl7_max_batch_messages: int = Field(default=10_000, description="most messages in one HL7 batch/file")
    worker_poll_interval_s: float = 0.2
    run_worker: bool = True
    worker_process: bool = Field(default=True, description="`serve` runs its worker (processing, scheduler, delivery) in a "
                                 "child process of its own (a second core and GIL: ingest never waits for it); false: in process")
    ingest_spool: bool | None = Field(default=None, description=(
        "SQLite: ingest commits to a file of its own (`<database>-ingest`), moved into the inbox by a thread beside it, so an "
        "ACK never waits for the main database's one writer; unset: on when `serve` runs its worker, off with --no-worker"))
    log_level: str = "INFO"
    retention_days: int = 30
    # Network waits (issue 11): each ends in an error that names what it waited for and how long.
    fhir_request_timeout_s: float = Field(default=10.0, gt=0, description=(
        "one FHIR read or search page, connect to last byte (retries of a failed request count inside it)"))
    fhir_sweep_timeout_s: float = Field(default=300.0, gt=0, description=(
        "one reconciliation sweep of a source: every type, every page"))
    fhir_backfill_timeout_s: float = Field(default=3600.0, gt=0, description="a whole backfill, every page")
    subscription_activation_timeout_s: float = Field(default=60.0, gt=0, description=(
        "how long `subscriptions apply` and `sandbox seed` wait for a Subscription to become active"))
    # The console (issue 15): who may sign in, how long a session lives, how HTTPS is served.
    console_users_file: Path = Field(default=Path(".careloop/console-users.yaml"), description=(
        "console users: name, argon2 password hash, roles (analyst, operator, auditor, admin), extra permissions; "
        "`careloop users add|passwd|list` edits it"))
    console_idle_timeout_s: float = Field(default=1800.0, gt=0, description="a console session idle this long is signed out")
    console_session_max_s: float = Field(default=12 * 3600.0, gt=0, description="a console session ends this long after sign-in")
    # Console sign-in through OpenID Connect (docs/console-oidc.md); off while console_oidc_issuer is unset.
    console_oidc_issuer: str | None = Field(default=None, description=(
        "OIDC issuer URL (https; http only on loopback); discovery reads ISSUER/.well-known/openid-configuration"))
    console_oidc_client_id: str | None = Field(default=None, description="the client id careloop is registered under at the issuer")
    console_oidc_client_secret: str | None = Field(default=None, description=(
        "the client secret (confidential client); unset: a public client proven by PKCE alone"))
    console_oidc_token_auth: str = Field(default="client_secret_basic", description=(
        "how the client secret is sent to the token endpoint: client_secret_basic or client_secret_post"))
    console_oidc_scopes: str = Field(default="openid profile email", description="scopes asked for ('openid' is always added)")
    console_oidc_roles_claim: str = Field(default="roles", description=(
        "ID token claim holding the user's IdP roles or groups; a dotted path reaches into objects (realm_access.roles)"))
    console_oidc_role_map: str = Field(default="", description=(
        "'idp-value:careloop-role,...' (roles: analyst, operator, auditor, admin); unmapped values are ignored, "
        "a user with no mapped role is refused"))
    console_oidc_name_claim: str | None = Field(default=None, description=(
        "claim naming the user in the audit; default preferred_username, then sub"))
    console_oidc_redirect_url: str | None = Field(default=None, description=(
        "the callback URL registered at the issuer; default: this request's base URL + /signin/oidc/callback"))
    console_oidc_display_name: str | None = Field(default=None, description=(
        "the name on the sign-in button ('Sign in with NAME'); default the issuer's host"))
    console_oidc_extra_hosts: str | None = Field(default=None, description=(
        "comma-separated further hosts the discovered endpoints may live on (e.g. Google's www.googleapis.com); "
        "by default only the issuer's host is contacted"))
    console_oidc_timeout_s: float = Field(default=10.0, gt=0, description="one request to the issuer (discovery, JWKS, token)")
    console_oidc_cache_ttl_s: float = Field(default=3600.0, ge=0, description="how long discovery and JWKS documents are reused")
    console_oidc_leeway_s: int = Field(default=60, ge=0, le=300, description="clock skew allowed on exp, iat and nbf")
    tls_cert_file: Path | None = Field(default=None, description="PEM certificate chain: serve HTTP over TLS (reloaded when it changes)")
    tls_key_file: Path | None = Field(default=None, description="PEM private key for tls_cert_file")
    allow_plain_http: bool = Field(default=False, description=(
        "serve plain HTTP beyond loopback on a network you control (e.g. a compose network whose published ports are "
        "bound to 127.0.0.1): passwords, sessions and tokens cross it unencrypted; a warning is logged at start"))
    trusted_proxies: str | None = Field(default=None, description=(
        "comma-separated addresses whose X-Forwarded-For/-Proto are trusted (a TLS-terminating proxy); none by default"))


    @field_validator("database_url")
    @classmethod
    def _database_path(cls, value: str) -> str:
        return database_url_of(value) or value


def database_url_of(value: str | None) -> str | None:
    """A URL as it is; a plain path as the SQLite file it names (``--database care.db``)."""
    if not value or "://" in value or value.startswith("sqlite:"):
        return value
    return f"sqlite:///{Path(value).expanduser().resolve()}"


def get_settings(**overrides: object) -> Settings:
    """Build settings from the environment, with explicit overrides (CLI flags) winning."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)  # type: ignore[arg-type]


def api_token_roles_map(settings: Settings) -> dict[str, tuple[str, ...]]:
    """``CARELOOP_API_TOKEN_ROLES`` ("name:role+role+permission,...") by token name, as written
    (the names are checked against config.roles by the API). Raises ValueError naming a malformed entry."""
    out: dict[str, tuple[str, ...]] = {}
    for i, entry in enumerate((settings.api_token_roles or "").split(","), 1):
        entry = entry.strip()
        if not entry:
            continue
        name, sep, grants = entry.partition(":")
        items = tuple(g.strip() for g in grants.split("+"))
        if not sep or not name.strip() or not all(items):
            raise ValueError(f"CARELOOP_API_TOKEN_ROLES entry {i} is not 'name:role+role+permission'")
        if name.strip() in out:
            raise ValueError(f"CARELOOP_API_TOKEN_ROLES entry {i} repeats token '{name.strip()}'")
        out[name.strip()] = items
    return out


def api_token_map(settings: Settings) -> dict[str, str]:
    """Configured API tokens by name: ``CARELOOP_API_TOKENS`` ("name:token,...") and
    ``CARELOOP_API_TOKEN`` (named ``api``). Raises ValueError naming a malformed entry."""
    tokens: dict[str, str] = {}
    for i, entry in enumerate((settings.api_tokens or "").split(","), 1):
        entry = entry.strip()
        if not entry:
            continue
        name, sep, token = entry.partition(":")
        if not sep or not name.strip() or not token.strip():
            raise ValueError(f"CARELOOP_API_TOKENS entry {i} is not 'name:token'")
        tokens[name.strip()] = token.strip()
    if settings.api_token:
        tokens.setdefault("api", settings.api_token)
    return tokens
