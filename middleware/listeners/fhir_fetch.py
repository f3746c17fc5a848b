"""Reading a FHIR server: reads, paged searches, ``_history`` and Bulk ``$export``.

Requests go through one httpx client per fetcher, built by :mod:`middleware.netpolicy`
(connect-time address checks, no proxy environment variables, credentials only inside the
source's credential scope).
Authentication: none, a static bearer token from an environment variable, or SMART
backend-services / OAuth2 client credentials (token cached until 30 s before expiry,
refreshed once on a 401). Short retries (tenacity) cover dropped connections, 5xx and
429/503, waiting what ``Retry-After`` asks (capped). Long outages are the reconciler's
business: it keeps its high-water mark and tries again at its interval.

Deadlines: every GET has one (``timeout_s``, default 10 s, from connect to the last byte of
the body, retries included), and a caller can pass an earlier one for a whole search or
sweep (``deadline``, a ``time.monotonic()`` instant). A server that accepts and never
answers, or drips its body, ends in :class:`FetchTimeout` naming the server, the request
and the wait.

Thread-safe: one lock serialises requests on the shared client.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping
from urllib.parse import urlencode

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from .. import netpolicy
from ..config.sources import FhirAuth, Source

log = logging.getLogger("careloop.fhir.fetch")

Json = dict[str, Any]
FHIR_JSON = "application/fhir+json"
#: short in-call retries: 4 attempts, waits 0.2 s, 0.4 s, 0.8 s (or Retry-After, at most 10 s), 30 s in all
ATTEMPTS = 4
MAX_RETRY_AFTER_S = 10.0
#: redirects followed per request (each must stay inside the credential scope)
MAX_REDIRECTS = 5


class FetchError(Exception):
    """The server could not be read (after retries); ``status`` is the HTTP status if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class FetchTimeout(FetchError):
    """A read did not complete within its deadline; the message names what and how long."""


class _Retryable(FetchError):
    def __init__(self, message: str, status: int | None, after: float | None, timed_out: bool = False) -> None:
        super().__init__(message, status)
        self.after = after
        self.timed_out = timed_out


class _DeadlinePassed(Exception):
    """The current GET's deadline passed (turned into a retryable timeout)."""


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _wait(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, _Retryable) and exc.after is not None:
        return min(exc.after, MAX_RETRY_AFTER_S)
    return float(0.2 * 2 ** (state.attempt_number - 1))


def _left(end: float) -> float:
    """Seconds left until ``end``; raises :class:`_DeadlinePassed` once it has passed."""
    left = end - time.monotonic()
    if left <= 0:
        raise _DeadlinePassed("deadline passed")
    return left


def _stop_at(end: float) -> Callable[[RetryCallState], bool]:
    return lambda state: time.monotonic() >= end


def _wait_until(end: float) -> Callable[[RetryCallState], float]:
    return lambda state: max(0.0, min(_wait(state), end - time.monotonic()))


def _what(path: str) -> str:
    """The request named without its query (which may carry identifiers): ``Appointment (search)``."""
    bare = path.split("?", 1)[0]
    if "://" in bare:
        bare = bare.split("://", 1)[1].partition("/")[2]
    return bare + (" (search)" if "?" in path else "")


@dataclass
class _Token:
    value: str
    expires_at: float


class TokenSource:
    """Bearer tokens for a source's ``fhir.auth`` (``None`` for ``kind: none``)."""

    def __init__(self, auth: FhirAuth, env: Mapping[str, str] | None = None,
                 policy: netpolicy.NetPolicy | None = None) -> None:
        self.auth = auth
        self.env = env if env is not None else os.environ
        self.policy = policy or netpolicy.policy(False)
        self._cached: _Token | None = None

    def token(self, *, refresh: bool = False) -> str | None:
        a = self.auth
        if a.kind == "none":
            return None
        if a.kind == "bearer":
            return self.env.get(a.token_env or "") or None
        if not refresh and self._cached and self._cached.expires_at > time.time() + 30:
            return self._cached.value
        if not a.token_url or not a.client_id:
            raise FetchError("client-credentials auth needs token_url and client_id")
        secret = self.env.get(a.client_secret_env or "", "")
        data = {"grant_type": "client_credentials"}
        if a.scope:
            data["scope"] = a.scope
        with netpolicy.guarded_client(self.policy, timeout=10.0) as http:
            try:
                resp = http.post(a.token_url, data=data, auth=(a.client_id, secret))
            except httpx.TransportError as exc:
                raise FetchError(f"token endpoint unreachable ({type(exc).__name__})") from exc
        if resp.status_code >= 400:
            raise FetchError(f"token endpoint answered {resp.status_code}", resp.status_code)
        body = resp.json()
        self._cached = _Token(str(body["access_token"]), time.time() + float(body.get("expires_in", 300)))
        return self._cached.value


class FhirFetcher:
    """A read-only client of one FHIR server (see the module docstring).

    Every connection goes through the outbound policy (:mod:`middleware.netpolicy`): the
    host is resolved once, checked, and the checked address is used. Credentials go only to
    the base URL's origin and the source's ``credential_hosts``: a ``link[next]``, redirect
    or status URL elsewhere is refused with :class:`FetchError` (not followed without them).
    """

    def __init__(self, base_url: str, auth: FhirAuth | None = None, *, env: Mapping[str, str] | None = None,
                 timeout_s: float = 10.0, allow_private_network: bool = False,
                 credential_hosts: Iterable[str] = ()) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.policy = netpolicy.policy(allow_private_network)
        self.scope = netpolicy.CredentialScope.of(self.base_url, credential_hosts)
        self.tokens = TokenSource(auth or FhirAuth(), env, self.policy)
        self._refresh = False
        self.http = netpolicy.guarded_client(
            self.policy, timeout=timeout_s, auth=netpolicy.ScopedBearer(self._token, self.scope),
            headers={"Accept": FHIR_JSON, "Accept-Charset": "UTF-8"},
        )
        self._lock = threading.Lock()
        self._end: float | None = None  # the current GET's deadline (requests are serialised by _lock)
        self.requests = 0

    @classmethod
    def for_source(cls, source: Source, env: Mapping[str, str] | None = None,
                   timeout_s: float = 10.0) -> "FhirFetcher | None":
        """A fetcher for a source with ``fhir.base_url``; ``None`` when it has none."""
        if not source.fhir.base_url:
            return None
        return cls(source.fhir.base_url, source.fhir.auth, env=env, timeout_s=timeout_s,
                   allow_private_network=source.fhir.allow_private_network,
                   credential_hosts=source.fhir.credential_hosts)

    def close(self) -> None:
        self.http.close()

    def _token(self) -> str | None:
        return self.tokens.token(refresh=self._refresh)

    def _url(self, path: str) -> str:
        return path if "://" in path else f"{self.base_url}/{path.lstrip('/')}"

    def _get(self, url: str) -> httpx.Response:
        """GET ``url``, following at most :data:`MAX_REDIRECTS` redirects inside the credential scope."""
        for _ in range(MAX_REDIRECTS + 1):
            self._in_scope(url, "URL")
            resp = self._timed_get(url)
            if not resp.is_redirect:
                return resp
            url = str(resp.next_request.url) if resp.next_request else url
            self._in_scope(url, "redirect")
        raise FetchError(f"more than {MAX_REDIRECTS} redirects")

    def _timed_get(self, url: str) -> httpx.Response:
        """One GET with the body read under the current deadline (a dripping body cannot outlast it)."""
        end = self._end if self._end is not None else time.monotonic() + self.timeout_s
        left = _left(end)
        req = self.http.build_request("GET", url, timeout=httpx.Timeout(left))
        resp = self.http.send(req, stream=True)
        try:
            body = bytearray()
            for chunk in resp.iter_bytes():
                body += chunk
                _left(end)
        except _DeadlinePassed as exc:
            raise httpx.ReadTimeout(f"body not complete by the deadline: {exc}", request=req) from exc
        finally:
            resp.close()
        resp._content = bytes(body)  # the body is read whole (what httpx's own read() sets)
        return resp

    def _in_scope(self, url: str, what: str) -> None:
        if not self.scope.permits(url):
            host = httpx.URL(url).host if "://" in url else "?"
            log.warning("%s to %s refused: not the base URL's origin nor in credential_hosts", what, host,
                        extra={"action": "fhir.link_refused"})
            raise FetchError(f"refused {what} to {host}: not the base URL's origin nor in credential_hosts")

    # -- core GET ---------------------------------------------------------------------
    def get_json(self, path: str, deadline: float | None = None) -> Json | None:
        """GET a path relative to the base (or an absolute URL in scope); ``None`` on 404/410.

        Ends by ``timeout_s`` from now, or by ``deadline`` (a ``time.monotonic()`` instant)
        when that is earlier. Raises :class:`FetchTimeout` when the deadline passes,
        :class:`FetchError` on other failures after the short retries, and at once for a
        URL outside the credential scope or refused by the outbound policy.
        """
        end = time.monotonic() + self.timeout_s
        if deadline is not None:
            end = min(end, deadline)
        waited = max(0.0, end - time.monotonic())
        url = self._url(path)
        with self._lock:
            self._end = end
            try:
                # tenacity's stubs type ``stop | callable`` as an error; it is valid at runtime (stop_any)
                for attempt in Retrying(retry=retry_if_exception_type(_Retryable), reraise=True,
                                        stop=stop_after_attempt(ATTEMPTS) | _stop_at(end),  # type: ignore[operator]
                                        wait=_wait_until(end)):
                    with attempt:
                        return self._get_once(url)
            except _Retryable as exc:
                if not (exc.timed_out or time.monotonic() >= end):
                    raise FetchError(f"the FHIR server {self.base_url} did not answer GET {_what(path)}: {exc}",
                                     exc.status) from exc
                raise FetchTimeout(f"timed out after {waited:.3g} s waiting for the FHIR server {self.base_url} "
                                   f"to answer GET {_what(path)} ({exc})") from exc
            finally:
                self._end = None
        raise FetchError("no attempt made")  # unreachable: Retrying runs at least once

    def _get_once(self, url: str) -> Json | None:
        self.requests += 1
        for attempt in (0, 1):
            self._refresh = attempt == 1
            try:
                resp = self._get(url)
            except netpolicy.CredentialRefused as exc:
                raise FetchError(str(exc)) from exc
            except _DeadlinePassed as exc:
                raise _Retryable("deadline passed", None, None, timed_out=True) from exc
            except httpx.TimeoutException as exc:
                raise _Retryable(type(exc).__name__, None, None, timed_out=True) from exc
            except httpx.TransportError as exc:
                if netpolicy.refusal_of(exc):
                    raise FetchError(str(netpolicy.refusal_of(exc))) from exc
                raise _Retryable(type(exc).__name__, None, None) from exc
            finally:
                self._refresh = False
            code = resp.status_code
            if code == 401:
                if attempt == 0 and self.tokens.auth.kind == "client-credentials":
                    continue
                raise FetchError("unauthorized", 401)
            if code in (404, 410):
                return None
            if code == 429 or code >= 500:
                raise _Retryable(f"server answered {code}", code, _retry_after(resp.headers.get("Retry-After")))
            if code >= 300:
                raise FetchError(f"server answered {code}", code)
            try:
                return resp.json()  # type: ignore[no-any-return]
            except ValueError as exc:  # not JSON
                raise FetchError("response is not JSON") from exc
        raise FetchError("unauthorized", 401)

    # -- FHIR interactions ----------------------------------------------------------------
    def read(self, rtype: str, rid: str) -> Json | None:
        """The current version, or ``None`` when it is gone (404/410)."""
        return self.get_json(f"{rtype}/{rid}")

    def vread(self, rtype: str, rid: str, version: str) -> Json | None:
        return self.get_json(f"{rtype}/{rid}/_history/{version}")

    def patient(self, pid: str) -> Json | None:
        return self.read("Patient", pid)

    def pages(self, path: str, deadline: float | None = None) -> Iterator[Json]:
        """Each Bundle of a search or history, following ``link[next]``; every page by ``deadline``."""
        url: str | None = path
        while url:
            bundle = self.get_json(url, deadline)
            if not bundle:
                return
            yield bundle
            url = next((link.get("url") for link in bundle.get("link") or [] if link.get("relation") == "next"), None)

    def search(self, rtype: str, params: Mapping[str, str], deadline: float | None = None) -> Iterator[Json]:
        """Resources of ``rtype`` matching ``params``, every page (``mode=include`` entries skipped)."""
        for bundle in self.pages(f"{rtype}?{urlencode(params)}", deadline):
            for e in bundle.get("entry") or []:
                res = e.get("resource")
                if res and res.get("resourceType") == rtype and (e.get("search") or {}).get("mode", "match") == "match":
                    yield res

    def history(self, rtype: str, since: str, count: int = 200, deadline: float | None = None) -> Iterator[Json]:
        """Type-level ``_history`` entries since ``since`` (deletes have ``request.method=DELETE``)."""
        for bundle in self.pages(f"{rtype}/_history?{urlencode({'_since': since, '_count': str(count)})}", deadline):
            yield from bundle.get("entry") or []

    def capability(self) -> Json | None:
        return self.get_json("metadata")

    def supports_export(self) -> bool:
        """Whether the CapabilityStatement advertises system-level ``$export``."""
        cap = self.capability() or {}
        for rest in cap.get("rest") or []:
            for op in rest.get("operation") or []:
                if op.get("name") == "export":
                    return True
        return False

    def export(self, types: list[str], poll_s: float = 1.0, deadline_s: float = 3600,
               sleep: Callable[[float], None] = time.sleep) -> Iterator[Json]:
        """Bulk Data ``$export`` (kick-off, poll, download NDJSON); yields resources.

        The status URL gets credentials only inside the credential scope (else
        :class:`FetchError`); an output file gets them only when the manifest says
        ``requiresAccessToken: true`` and the file is inside the scope (else refused), and is
        fetched without them when it says ``false`` (e.g. pre-signed storage URLs).
        """
        try:
            yield from self._export(types, poll_s, deadline_s, sleep)
        except netpolicy.CredentialRefused as exc:
            raise FetchError(str(exc)) from exc
        except httpx.TransportError as exc:
            raise FetchError(f"$export: {netpolicy.refusal_of(exc) or type(exc).__name__}") from exc

    def _export(self, types: list[str], poll_s: float, deadline_s: float,
                sleep: Callable[[float], None]) -> Iterator[Json]:
        import orjson

        http = self.http
        kick = http.get(f"{self.base_url}/$export", params={"_type": ",".join(types)},
                        headers={"Prefer": "respond-async"})
        if kick.status_code != 202 or "content-location" not in kick.headers:
            raise FetchError(f"$export kick-off answered {kick.status_code}", kick.status_code)
        status_url = self._url(kick.headers["content-location"])
        end = time.monotonic() + deadline_s
        while True:
            st = http.get(status_url, headers={"Accept": "application/json"})
            if st.status_code == 200:
                break
            if st.status_code != 202 or time.monotonic() > end:
                raise FetchError(f"$export status answered {st.status_code}", st.status_code)
            sleep(min(_retry_after(st.headers.get("retry-after")) or poll_s, 30.0))
        manifest = st.json()
        with_token = bool(manifest.get("requiresAccessToken", True))
        for out in manifest.get("output") or []:
            url = str(out["url"])
            if with_token:
                self._in_scope(url, "$export output")
            auth: Any = httpx.USE_CLIENT_DEFAULT if with_token else None
            with http.stream("GET", url, headers={"Accept": "application/fhir+ndjson"}, auth=auth) as resp:
                if resp.status_code != 200:
                    raise FetchError(f"$export output answered {resp.status_code}", resp.status_code)
                for line in resp.iter_lines():
                    if line.strip():
                        yield orjson.loads(line)
