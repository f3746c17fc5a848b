"""Refuse network serving on weak secrets: the published development defaults or short tokens.

Beyond loopback (an HTTP or MLLP host that is not loopback, or for a worker a database or
metrics host that is not), ``serve`` and ``worker`` check every secret they use and print
one line per problem naming the variable and how to generate a value.
"""
from __future__ import annotations

from ..settings import DEV_CONTACT_KEY_SECRET, Settings, api_token_map

MIN_SECRET_CHARS = 32
GENERATE = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'
GENERATE_WHSEC = ('python -c "import base64, secrets; '
                  "print('whsec_' + base64.b64encode(secrets.token_bytes(32)).decode())\"")


def weak_secrets(settings: Settings, webhook_secret: str, dev_webhook_secret: str) -> list[str]:
    """One line per weak or malformed secret (empty when all are fit for a network)."""
    from ..keyring import contact_keyring

    out: list[str] = []
    if webhook_secret == dev_webhook_secret:
        out.append(f"CARELOOP_WEBHOOK_SECRET is the published development secret; generate one with: {GENERATE_WHSEC}")
    try:
        tokens = api_token_map(settings)
    except ValueError as exc:
        out.append(f"{exc}")
        tokens = {}
    for name, token in tokens.items():
        var = "CARELOOP_API_TOKEN (or --api-token)" if name == "api" and token == settings.api_token \
            else f"CARELOOP_API_TOKENS entry '{name}'"
        if len(token) < MIN_SECRET_CHARS:
            out.append(f"{var} is shorter than {MIN_SECRET_CHARS} characters; generate one with: {GENERATE}")
    try:
        ring = contact_keyring(settings)
    except ValueError as exc:
        return [*out, str(exc)]
    var = "CARELOOP_CONTACT_KEY_SECRETS" if settings.contact_key_secrets else "CARELOOP_CONTACT_KEY_SECRET"
    for s in ring.secrets:
        if s.secret == DEV_CONTACT_KEY_SECRET:
            out.append(f"{var} ({s.version}) is the published development secret; generate one with: {GENERATE}")
        elif len(s.secret) < MIN_SECRET_CHARS:
            out.append(f"{var} ({s.version}) is shorter than {MIN_SECRET_CHARS} characters; generate one with: {GENERATE}")
    return out


def malformed_secrets(settings: Settings) -> list[str]:
    """Secrets that cannot be parsed (checked on loopback too): one line each."""
    from ..api.authn import token_grants
    from ..keyring import contact_keyring

    out: list[str] = []
    for parse in (api_token_map, token_grants, contact_keyring):
        try:
            parse(settings)
        except ValueError as exc:
            out.append(str(exc))
    return out


def report(problems: list[str], command: str, prefix: str = "refusing to serve beyond loopback: ") -> int:
    """Print each problem as one line and the refusal; return the exit status (2)."""
    import sys

    for p in problems:
        print(f"careloop {command}: {prefix}{p}", file=sys.stderr)
    return 2
