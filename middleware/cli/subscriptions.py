"""``careloop subscriptions apply|status``: manage careloop's Subscriptions on a FHIR server.

``apply`` reads ``subscriptions/careloop-<type>[-payloadless].json``, fills
``${CARELOOP_ENDPOINT}`` (``--endpoint``, default ``http://<http_host>:<http_port>/fhir/<source>``)
and ``${CARELOOP_FHIR_TOKEN}`` (the source's notification token; without one the header
line is dropped), finds an existing Subscription by its ``meta.tag``
(``urn:careloop:subscription|<name>``), creates or updates it only when it differs, and
waits until the server reports ``active`` (HAPI activates asynchronously, in seconds), at
most ``--wait`` seconds (``subscription_activation_timeout_s``). Every request to the
server ends by ``fhir_request_timeout_s``; a server that does not answer ends the command
with one line naming the request and the wait.
``apply --topic full-resource|id-only|empty`` uses the topic-based (R4 Subscriptions Backport IG)
definitions instead: it first PUTs the ``Basic``-encoded SubscriptionTopics of
``subscriptions/topics/topic-<type>.json`` (idempotent), then applies
``subscriptions/topics/careloop-topic-<type>.json`` with that payload content. The server must load
R4 topics (HAPI: ``SubscriptionTopicConfig`` imported, as the sandbox's launcher does).

``status`` shows the server's view plus careloop's: last notification, the last event number seen
per subscription, the numbers still missing (a gap being recovered), last reconciliation and the
high-water-mark lag.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from .serve import add_common, open_data, settings_from

TAG_SYSTEM = "urn:careloop:subscription"
DEFAULT_DIR = Path("subscriptions")
FJ = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


PAYLOAD_CONTENTS = ("full-resource", "id-only", "empty")


def _load(path: Path, endpoint: str, token: str | None, content: str | None = None) -> dict[str, Any]:
    sub = json.loads(path.read_text())
    ch = sub["channel"]
    for ext in (ch.get("_payload") or {}).get("extension") or []:
        if ext.get("valueCode") == "${CARELOOP_PAYLOAD_CONTENT}":
            ext["valueCode"] = content or "full-resource"
    ch["endpoint"] = ch["endpoint"].replace("${CARELOOP_ENDPOINT}", endpoint.rstrip("/"))
    headers = []
    for h in ch.get("header") or []:
        if "${CARELOOP_FHIR_TOKEN}" in h:
            if not token:
                continue
            h = h.replace("${CARELOOP_FHIR_TOKEN}", token)
        headers.append(h)
    ch["header"] = headers
    return sub  # type: ignore[no-any-return]


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("criteria", "channel", "reason")
    return all(a.get(k) == b.get(k) for k in keys) and b.get("status") in ("active", "requested")


def ours(http: Any) -> dict[str, list[dict[str, Any]]]:
    """careloop's Subscriptions on the server by tag code, oldest first.

    Lists ``Subscription?_count=200`` (following ``next``) and filters by ``meta.tag`` here:
    HAPI 8.8 answers ``_tag`` searches on Subscription with nothing. ``Cache-Control: no-cache``:
    HAPI otherwise reuses an identical search's results for up to a minute, so a Subscription
    created (or set to ``error``) since someone else's listing would be missing or stale.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    url: str | None = "/Subscription?_count=200&_sort=_id"
    while url:
        bundle = http.get(url, headers={"Cache-Control": "no-cache"}).raise_for_status().json()
        for e in bundle.get("entry") or []:
            r = e["resource"]
            for t in (r.get("meta") or {}).get("tag") or []:
                if t.get("system") == TAG_SYSTEM:
                    out.setdefault(t.get("code", ""), []).append(r)
        url = next((link["url"] for link in bundle.get("link") or [] if link.get("relation") == "next"), None)
    return out


def _client(source: Any, timeout_s: float = 15.0) -> Any:
    """An httpx client for the source's FHIR server under the outbound policy: connections
    checked at connect time, the token sent only to the base URL's origin and the source's
    ``credential_hosts`` (a ``next`` link elsewhere is refused, see docs/destinations.md)."""
    from .. import netpolicy
    from ..listeners.fhir_fetch import TokenSource

    fhir = source.fhir
    policy = netpolicy.policy(fhir.allow_private_network)
    tokens = TokenSource(fhir.auth, policy=policy)
    scope = netpolicy.CredentialScope.of(fhir.base_url, fhir.credential_hosts)
    return netpolicy.guarded_client(policy, base_url=fhir.base_url.rstrip("/"), headers=FJ, timeout=timeout_s,
                                    auth=netpolicy.ScopedBearer(tokens.token, scope))


def _one_line_errors(cmd: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Policy refusals and unreachable servers end the command with one line and exit 1."""
    def run(args: argparse.Namespace) -> int:
        import httpx

        from .. import netpolicy

        try:
            return cmd(args)
        except netpolicy.CredentialRefused as exc:
            print(f"careloop subscriptions: {exc}", file=sys.stderr)
        except httpx.TransportError as exc:
            print(f"careloop subscriptions: {netpolicy.refusal_of(exc) or type(exc).__name__}", file=sys.stderr)
        return 1

    return run


@_one_line_errors
def cmd_apply(args: argparse.Namespace) -> int:
    import httpx

    settings = settings_from(args)
    timeout_s = settings.fhir_request_timeout_s
    try:
        return _apply(args, settings)
    except httpx.TimeoutException as exc:
        try:
            what = f"{exc.request.method} {exc.request.url.path}"
        except RuntimeError:  # raised before a request was built
            what = "a request"
        print(f"careloop subscriptions: timed out after {timeout_s:g} s waiting for the FHIR server to answer {what}",
              file=sys.stderr)
    except httpx.HTTPError as exc:
        try:
            where = f" at {exc.request.url.scheme}://{exc.request.url.netloc.decode()}"
        except RuntimeError:
            where = ""
        print(f"careloop subscriptions: the FHIR server{where} did not answer ({type(exc).__name__}: {exc})", file=sys.stderr)
    return 1


def _wait_active(http: Any, sid: str, end: float) -> tuple[str, dict[str, Any]]:
    """Poll ``Subscription/{sid}`` until active/error/off or ``end``; (status, last body)."""
    import httpx

    status: str = "no answer"
    sub: dict[str, Any] = {}
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return status, sub
        try:
            sub = http.get(f"/Subscription/{sid}", timeout=left).json()
            status = sub.get("status", "?")
        except httpx.TimeoutException:
            status = "no answer"
        if status in ("active", "error", "off"):
            return status, sub
        time.sleep(min(0.5, max(0.0, end - time.monotonic())))


def _apply(args: argparse.Namespace, settings: Any) -> int:
    from ..rules.load import load_ruleset

    rs, _ = load_ruleset(settings.mappings_dir)
    source = rs.sources.get(args.source) if rs else None
    if source is None or not source.fhir.base_url:
        print(f"careloop subscriptions: unknown source {args.source!r} or no fhir.base_url", file=sys.stderr)
        return 2
    endpoint = args.endpoint or f"http://{settings.http_host}:{settings.http_port}/fhir/{source.name}"
    token = os.environ.get(source.notification_token_env())
    if not token:
        print(f"warning: {source.notification_token_env()} is not set; careloop accepts this source from loopback only", file=sys.stderr)
    suffix = "-payloadless" if args.payloadless else ""
    types = args.types or source.fhir.resource_types
    rc = 0
    with _client(source, settings.fhir_request_timeout_s) as http:
        applied: list[tuple[str, str]] = []
        mine = ours(http)
        for t in types:
            if args.topic:
                name, path = f"careloop-topic-{t.lower()}", args.dir / "topics" / f"careloop-topic-{t.lower()}.json"
                if not _put_topic(http, args.dir / "topics" / f"topic-{t.lower()}.json"):
                    rc = 1
                    continue
            else:
                name = f"careloop-{t.lower()}{suffix}"
                path = args.dir / f"{name}.json"
            if not path.exists():
                print(f"{name}: no definition at {path}", file=sys.stderr)
                rc = 1
                continue
            want = _load(path, endpoint, token, args.topic)
            existing = mine.get(name, [])
            for extra in existing[1:]:  # an earlier non-idempotent run or a copy: one per definition
                http.delete(f"/Subscription/{extra['id']}")
                print(f"{name}: removed duplicate Subscription/{extra['id']}")
            if existing and _same(want, existing[0]):
                applied.append((name, existing[0]["id"]))
                print(f"{name}: unchanged (Subscription/{existing[0]['id']})")
                continue
            if existing:
                want["id"] = existing[0]["id"]
                r = http.put(f"/Subscription/{want['id']}", content=json.dumps(want))
                verb = "updated"
            else:
                r = http.post("/Subscription", content=json.dumps(want))
                verb = "created"
            if r.status_code >= 300:
                print(f"{name}: {verb[:-1]} failed: HTTP {r.status_code}", file=sys.stderr)
                rc = 1
                continue
            sid = r.json()["id"]
            applied.append((name, sid))
            print(f"{name}: {verb} Subscription/{sid}")
        wait = args.wait if args.wait is not None else settings.subscription_activation_timeout_s
        deadline = time.monotonic() + wait
        for name, sid in applied:
            status, sub = _wait_active(http, sid, deadline)
            error_note = f" ({sub.get('error')})" if sub.get("error") else ""
            if status in ("active", "error", "off"):
                print(f"{name}: Subscription/{sid} is {status}{error_note} -> {(sub.get('channel') or {}).get('endpoint')}")
            else:
                print(f"{name}: timed out after {wait:g} s waiting for Subscription/{sid} on {source.fhir.base_url} "
                      f"to become active (last status: {status}{error_note})", file=sys.stderr)
            if status != "active":
                rc = 1
    return rc


def cmd_status(args: argparse.Namespace) -> int:
    from ..pipeline.fhir_state import hwm_key, parse_instant, pending_key, reconcile_key
    from ..rules.load import load_ruleset
    from ..storage.queries import kv
    from ..storage.queries.metrics import last_received
    from ..storage.sql import unit

    settings = settings_from(args)
    rs, _ = load_ruleset(settings.mappings_dir)
    source = rs.sources.get(args.source) if rs else None
    if source is None:
        print(f"careloop subscriptions: unknown source {args.source!r}", file=sys.stderr)
        return 2
    server: dict[str, dict[str, Any]] = {}  # Subscription id -> the server's resource
    if source.fhir.base_url:
        try:
            with _client(source) as http:
                subs = [r for rs_ in ours(http).values() for r in rs_]
            print(f"server {source.fhir.base_url}: {len(subs)} careloop subscription(s)")
            server = {str(r.get("id")): r for r in subs}
        except Exception as exc:  # report and carry on with local state
            print(f"server {source.fhir.base_url}: unreachable ({type(exc).__name__})")
    engine = open_data(settings)
    now = time.time()
    last = last_received(engine, channel="fhir", source=source.name)
    with unit(engine) as u:
        when = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(last)) + f' ({now - last:.0f} s ago)' if last else 'never'
        print(f"last notification: {when}")
        seen = {key.rsplit(".", 1)[-1]: st for key, st in kv.with_prefix_json(u, f"fhir.sub.{source.name}.").items()}
        pending = [t for t in source.fhir.resource_types if kv.get_json(u, pending_key(source.name, t))]
        for line in subscription_lines(server, seen, pending):
            print(line)
        rec = kv.get_json(u, reconcile_key(source.name))
        if rec:
            print(f"last reconciliation: {now - rec['at']:.0f} s ago ({rec['reason']}): {rec['stored']} stored, "
                  f"errors {len(rec.get('errors') or [])}")
        else:
            print("last reconciliation: never")
        for t in source.fhir.resource_types:
            at = parse_instant((kv.get_json(u, hwm_key(source.name, t)) or {}).get("at"))
            print(f"  {t}: high-water mark {at.isoformat() if at else 'none'}" + (f", lag {now - at.timestamp():.0f} s" if at else ""))
    return 0


def subscription_lines(server: dict[str, dict[str, Any]], seen: dict[str, dict[str, Any]],
                       pending: list[str]) -> list[str]:
    """One line per subscription, server's and careloop's view joined by Subscription id (pure).

    ``server``: careloop's Subscriptions on the server by id (status, ``error``, topic or criteria);
    ``seen``: careloop's counter state per subscription id (``fhir.sub.<source>.<id>``: last event
    number, numbers still missing, gaps, resets, last notification type); ``pending``: resource types
    with a sweep asked for and not yet done. A subscription with missing numbers is "gap being
    recovered" while a sweep is pending, "gap recovered by reconciliation" once none is (a sweep
    cannot tell which event numbers it covered, so the numbers stay listed).
    """
    out = []
    for sid in sorted(set(server) | set(seen)):
        found, st = server.get(sid), seen.get(sid) or {}
        tag = next((t.get("code") for t in ((found or {}).get("meta") or {}).get("tag") or [] if t.get("system") == TAG_SYSTEM), None)
        if found is None:
            where = "server: not found"
        else:
            err = found.get("error")
            where = f"server: {found.get('status')}" + (f" ({err})" if err else "")
        what = f" {tag}" if tag else ""
        target = f" criteria={found.get('criteria')}" if found else ""
        if not st:
            out.append(f"  Subscription/{sid}{what}: {where}; no notification seen{target}")
            continue
        missing = [int(x) for x in st.get("missing") or []]
        shown = ",".join(map(str, missing[:10])) + ("..." if len(missing) > 10 else "")
        gap = (f"; gap {'being recovered' if pending else 'recovered by reconciliation'}: missing {shown}" if missing else "")
        out.append(f"  Subscription/{sid}{what}: {where}; last event {st.get('last_event')}"
                   f" (last {st.get('last_type')}), gaps {st.get('gaps', 0)}, resets {st.get('resets', 0)}{gap}{target}")
    return out


def _put_topic(http: Any, path: Path) -> bool:
    """PUT a Basic-encoded SubscriptionTopic by its id (creates or replaces it; idempotent)."""
    if not path.exists():
        print(f"no topic definition at {path}", file=sys.stderr)
        return False
    topic = json.loads(path.read_text())
    r = http.put(f"/Basic/{topic['id']}", content=json.dumps(topic))
    if r.status_code >= 300:
        print(f"Basic/{topic['id']}: topic not stored: HTTP {r.status_code}", file=sys.stderr)
        return False
    print(f"Basic/{topic['id']}: topic {topic['extension'][0]['valueUri']} stored")
    return True


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("subscriptions", help="create/update careloop's FHIR Subscriptions; show their status")
    ss = p.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    a = ss.add_parser("apply", help="create or update the Subscriptions idempotently and wait for active")
    a.add_argument("--source", default="default")
    a.add_argument("--endpoint", help="careloop's base for this source (default http://<http_host>:<http_port>/fhir/<source>)")
    a.add_argument("--types", nargs="+")
    kind = a.add_mutually_exclusive_group()
    kind.add_argument("--payloadless", action="store_true", help="payload-less variants (careloop searches on each POST)")
    kind.add_argument("--topic", choices=PAYLOAD_CONTENTS, help=(
        "topic-based subscriptions (R4 backport) with this payload content, after storing careloop's topics"))
    a.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    a.add_argument("--wait", type=float, default=None,
                   help="seconds to wait for status active (default: subscription_activation_timeout_s, 60)")
    add_common(a)
    a.set_defaults(func=cmd_apply)
    st = ss.add_parser("status", help="server status, last notification, last reconciliation, lag")
    st.add_argument("--source", default="default")
    add_common(st)
    st.set_defaults(func=cmd_status)
