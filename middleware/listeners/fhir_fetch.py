"""Reading a FHIR server: reads, paged searches, ``_history`` and Bulk ``$export``.

Requests go through **fhirclient** (``FHIRClient(...).server``: its ``requests`` session,
``request_json`` and status-to-exception mapping); Bulk export polling uses httpx.
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

Thread-safe: one lock serialises requests on the shared session.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import urlencode

import httpx
import requests
import urllib3
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from ..config.sources import FhirAuth, Source

log = logging.getLogger("careloop.fhir.fetch")

Json = dict[str, Any]
FHIR_JSON = "application/fhir+json"
#: short in-call retries: 4 attempts, waits 0.2 s, 0.4 s, 0.8 s (or Retry-After, at most 10 s), 30 s in all
ATTEMPTS = 4
MAX_RETRY_AFTER_S = 10.0


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


def _left(end: float) -> float:
    """Seconds left until ``end``; raises ``requests.Timeout`` once it has passed."""
    left = end - time.monotonic()
    if left <= 0:
        raise requests.Timeout("deadline passed")
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


def _wait(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, _Retryable) and exc.after is not None:
        return min(exc.after, MAX_RETRY_AFTER_S)
    return float(0.2 * 2 ** (state.attempt_number - 1))


@dataclass
class _Token:
    value: str
    expires_at: float


class TokenSource:
    """Bearer tokens for a source's ``fhir.auth`` (``None`` for ``kind: none``)."""

    def __init__(self, auth: FhirAuth, env: Mapping[str, str] | None = None) -> None:
        self.auth = auth
        self.env = env if env is not None else os.environ
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
        resp = httpx.post(a.token_url, data=data, auth=(a.client_id, secret), timeout=10.0)
        if resp.status_code >= 400:
            raise FetchError(f"token endpoint answered {resp.status_code}", resp.status_code)
        body = resp.json()
        self._cached = _Token(str(body["access_token"]), time.time() + float(body.get("expires_in", 300)))
        return self._cached.value


class FhirFetcher:
    """A read-only client of one FHIR server (see the module docstring)."""

    def __init__(self, base_url: str, auth: FhirAuth | None = None, *, env: Mapping[str, str] | None = None,
                 timeout_s: float = 10.0) -> None:
        from fhirclient import client

        self.base_url = base_url.rstrip("/")
        self.client = client.FHIRClient(settings={"app_id": "careloop", "api_base": self.base_url + "/"})
        self.server = self.client.server
        session = self.server.session
        self._request = session.request
        session.request = self._timed  # type: ignore[method-assign]  # fhirclient passes no timeout
        self.timeout_s = timeout_s
        self.tokens = TokenSource(auth or FhirAuth(), env)
        self._lock = threading.Lock()
        self._end: float | None = None  # the current GET's deadline (requests are serialised by _lock)
        self.requests = 0

    @classmethod
    def for_source(cls, source: Source, env: Mapping[str, str] | None = None,
                   timeout_s: float = 10.0) -> "FhirFetcher | None":
        """A fetcher for a source with ``fhir.base_url``; ``None`` when it has none."""
        if not source.fhir.base_url:
            return None
        return cls(source.fhir.base_url, source.fhir.auth, env=env, timeout_s=timeout_s)

    def _timed(self, method: str, url: str, **kw: Any) -> requests.Response:
        """One request with the body read under the deadline (fhirclient passes no timeout)."""
        end = self._end if self._end is not None else time.monotonic() + self.timeout_s
        kw["timeout"] = _left(end)
        kw["stream"] = True
        resp: requests.Response = self._request(method, url, **kw)
        try:
            body = bytearray()
            sock = getattr(getattr(resp.raw, "connection", None), "sock", None)
            while True:
                left = _left(end)
                if sock is not None:
                    sock.settimeout(left)  # a dripping body cannot outlast the deadline
                chunk = resp.raw.read1(65536, decode_content=True)
                if not chunk:
                    break
                body += chunk
        except (urllib3.exceptions.TimeoutError, OSError) as exc:
            resp.close()
            if isinstance(exc, (urllib3.exceptions.TimeoutError, TimeoutError)):
                raise requests.Timeout(f"body not complete by the deadline: {exc}") from exc
            raise requests.ConnectionError(str(exc)) from exc
        except urllib3.exceptions.HTTPError as exc:
            resp.close()
            raise requests.ConnectionError(str(exc)) from exc
        resp.raw.release_conn()  # the body is read whole: the connection can serve the next request
        resp._content = bytes(body)  # what requests itself sets once a body is read
        resp._content_consumed = True
        return resp

    def _authorize(self, refresh: bool = False) -> None:
        tok = self.tokens.token(refresh=refresh)
        if tok:
            self.server.session.headers["Authorization"] = f"Bearer {tok}"

    # -- core GET ---------------------------------------------------------------------
    def get_json(self, path: str, deadline: float | None = None) -> Json | None:
        """GET a path relative to the base (or an absolute URL); ``None`` on 404/410.

        Ends by ``timeout_s`` from now, or by ``deadline`` (a ``time.monotonic()`` instant)
        when that is earlier. Raises :class:`FetchTimeout` when the deadline passes and
        :class:`FetchError` on other failures, after the short retries.
        """
        end = time.monotonic() + self.timeout_s
        if deadline is not None:
            end = min(end, deadline)
        waited = max(0.0, end - time.monotonic())
        with self._lock:
            self._end = end
            try:
                for attempt in Retrying(retry=retry_if_exception_type(_Retryable), reraise=True,
                                        stop=stop_after_attempt(ATTEMPTS) | _stop_at(end), wait=_wait_until(end)):
                    with attempt:
                        return self._get_once(path)
            except _Retryable as exc:
                if not (exc.timed_out or time.monotonic() >= end):
                    raise FetchError(f"the FHIR server {self.base_url} did not answer GET {_what(path)}: {exc}",
                                     exc.status) from exc
                raise FetchTimeout(f"timed out after {waited:.3g} s waiting for the FHIR server {self.base_url} "
                                   f"to answer GET {_what(path)} ({exc})") from exc
            finally:
                self._end = None
        raise FetchError("no attempt made")  # unreachable: Retrying runs at least once

    def _get_once(self, path: str) -> Json | None:
        from fhirclient.server import FHIRNotFoundException, FHIRUnauthorizedException

        self.requests += 1
        for attempt in (0, 1):
            self._authorize(refresh=attempt == 1)
            try:
                return self.server.request_json(path)  # type: ignore[no-any-return]
            except FHIRNotFoundException:
                return None
            except FHIRUnauthorizedException as exc:
                if attempt == 0 and self.tokens.auth.kind == "client-credentials":
                    continue
                raise FetchError("unauthorized", 401) from exc
            except requests.HTTPError as exc:
                resp = exc.response
                code = resp.status_code if resp is not None else None
                if code == 410:
                    return None
                if code in (429, 502, 503, 504) or (code or 0) >= 500:
                    after = _retry_after(resp.headers.get("Retry-After")) if resp is not None else None
                    raise _Retryable(f"server answered {code}", code, after) from exc
                raise FetchError(f"server answered {code}", code) from exc
            except (requests.Timeout, TimeoutError) as exc:
                raise _Retryable(type(exc).__name__, None, None, timed_out=True) from exc
            except requests.ConnectionError as exc:
                raise _Retryable(type(exc).__name__, None, None) from exc
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
            url = next((l.get("url") for l in bundle.get("link") or [] if l.get("relation") == "next"), None)

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
        """Bulk Data ``$export`` (kick-off, poll, download NDJSON); yields resources."""
        headers = {"Accept": FHIR_JSON, "Prefer": "respond-async"}
        tok = self.tokens.token()
        if tok:
            headers["Authorization"] = f"Bearer {tok}"
        with httpx.Client(timeout=self.timeout_s, headers=headers) as http:
            kick = http.get(f"{self.base_url}/$export", params={"_type": ",".join(types)})
            if kick.status_code != 202 or "content-location" not in kick.headers:
                raise FetchError(f"$export kick-off answered {kick.status_code}", kick.status_code)
            status_url = kick.headers["content-location"]
            end = time.monotonic() + deadline_s
            while True:
                st = http.get(status_url, headers={"Accept": "application/json"})
                if st.status_code == 200:
                    break
                if st.status_code != 202 or time.monotonic() > end:
                    raise FetchError(f"$export status answered {st.status_code}", st.status_code)
                sleep(min(_retry_after(st.headers.get("retry-after")) or poll_s, 30.0))
            for out in st.json().get("output") or []:
                with http.stream("GET", out["url"], headers={"Accept": "application/fhir+ndjson"}) as resp:
                    for line in resp.iter_lines():
                        if line.strip():
                            import orjson

                            yield orjson.loads(line)
