"""A small FHIR R4 server on loopback for the fetch paths (read, vread, search, _history).

In memory, versioned: ``put`` creates or updates (version + ``meta.lastUpdated``), ``delete``
adds a deleted version. Search supports ``_lastUpdated=gt|ge``, ``_sort=_lastUpdated``,
``_count`` with ``next`` links, and ``_include=<Type>:patient|subject``; type history
supports ``_since``. ``fail_next`` makes the next GETs answer a status (e.g. 429 with
``Retry-After``). Every request path is logged in ``requests``.
"""
from __future__ import annotations

import copy
import json
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

Json = dict[str, Any]


def ts(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FhirStub:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.lock = threading.Lock()
        self.versions: dict[tuple[str, str], list[Json | None]] = {}  # None = deleted version
        self.stamps: dict[tuple[str, str], list[datetime]] = {}
        self.requests: list[str] = []
        self.fail: list[tuple[int, dict[str, str]]] = []
        self.clock = datetime.now(timezone.utc)
        self.capability_ops: list[str] = []
        stub = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                with stub.lock:
                    stub.requests.append(self.path)
                    if stub.fail:
                        code, headers = stub.fail.pop(0)
                        return self._send(code, {"resourceType": "OperationOutcome"}, headers)
                    code, body = stub.route(self.path)
                self._send(code, body)

            def _send(self, code: int, body: Json | None, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(code)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, 0), H)
        self.port = self.httpd.server_address[1]
        self.base = f"http://{host}:{self.port}/fhir"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FhirStub":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- mutation ---------------------------------------------------------------------
    def _tick(self, at: datetime | None) -> datetime:
        self.clock = at or max(datetime.now(timezone.utc), self.clock + timedelta(milliseconds=1))
        return self.clock

    def put(self, resource: Json, at: datetime | None = None) -> Json:
        """Create or update; returns the stored copy with ``meta.versionId``/``lastUpdated``."""
        with self.lock:
            key = (resource["resourceType"], resource["id"])
            hist = self.versions.setdefault(key, [])
            when = self._tick(at)
            r = copy.deepcopy(resource)
            r["meta"] = {**(r.get("meta") or {}), "versionId": str(len(hist) + 1), "lastUpdated": ts(when)}
            hist.append(r)
            self.stamps.setdefault(key, []).append(when)
            return copy.deepcopy(r)

    def delete(self, rtype: str, rid: str, at: datetime | None = None) -> str:
        with self.lock:
            key = (rtype, rid)
            hist = self.versions[key]
            hist.append(None)
            self.stamps[key].append(self._tick(at))
            return str(len(hist))

    def bulk_load(self, resources: list[Json]) -> None:
        """Many creates at once (one lock), for benchmarks."""
        with self.lock:
            for resource in resources:
                key = (resource["resourceType"], resource["id"])
                when = self._tick(None)
                r = dict(resource)
                r["meta"] = {"versionId": "1", "lastUpdated": ts(when)}
                self.versions[key] = [r]
                self.stamps[key] = [when]

    # -- routing ----------------------------------------------------------------------
    def route(self, raw_path: str) -> tuple[int, Json | None]:
        u = urlparse(raw_path)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        parts = [p for p in u.path.split("/") if p][1:]  # drop "fhir"
        if parts == ["metadata"]:
            return 200, {"resourceType": "CapabilityStatement", "status": "active", "kind": "instance",
                         "fhirVersion": "4.0.1", "format": ["json"],
                         "rest": [{"mode": "server", "operation": [{"name": n, "definition": f"x/{n}"} for n in self.capability_ops]}]}
        if len(parts) == 1:
            return 200, self.search(parts[0], q, raw_path)
        if len(parts) == 2 and parts[1] == "_history":
            return 200, self.type_history(parts[0], q)
        if len(parts) == 2:
            hist = self.versions.get((parts[0], parts[1]))
            if not hist:
                return 404, {"resourceType": "OperationOutcome"}
            return (410, {"resourceType": "OperationOutcome"}) if hist[-1] is None else (200, copy.deepcopy(hist[-1]))
        if len(parts) == 4 and parts[2] == "_history":
            hist = self.versions.get((parts[0], parts[1])) or []
            i = int(parts[3]) - 1
            if not 0 <= i < len(hist):
                return 404, {"resourceType": "OperationOutcome"}
            return (410, {"resourceType": "OperationOutcome"}) if hist[i] is None else (200, copy.deepcopy(hist[i]))
        return 404, {"resourceType": "OperationOutcome"}

    def _current(self, rtype: str) -> list[tuple[Json, datetime]]:
        out = []
        for (t, _), hist in self.versions.items():
            if t == rtype and hist and hist[-1] is not None:
                out.append((hist[-1], self.stamps[(t, hist[-1]["id"])][-1]))
        return out

    def search(self, rtype: str, q: dict[str, str], raw_path: str) -> Json:
        items = self._current(rtype)
        lu = q.get("_lastUpdated")
        if lu:
            op, val = lu[:2], datetime.fromisoformat(lu[2:].replace("Z", "+00:00"))
            items = [(r, t) for r, t in items if (t > val if op == "gt" else t >= val)]
        items.sort(key=lambda x: x[1])
        count = int(q.get("_count", "50"))
        offset = int(q.get("_offset", "0"))
        page = items[offset:offset + count]
        entries: list[Json] = [{"fullUrl": f"{self.base}/{rtype}/{r['id']}", "resource": copy.deepcopy(r),
                                "search": {"mode": "match"}} for r, _ in page]
        inc = q.get("_include")
        if inc:
            seen = set()
            for r, _ in page:
                ref = ((r.get("subject") or {}).get("reference")) or next(
                    (p["actor"]["reference"] for p in r.get("participant") or []
                     if str((p.get("actor") or {}).get("reference", "")).startswith("Patient/")), None)
                if ref and ref not in seen:
                    seen.add(ref)
                    hist = self.versions.get(tuple(ref.split("/", 1)))  # type: ignore[arg-type]
                    if hist and hist[-1] is not None:
                        entries.append({"resource": copy.deepcopy(hist[-1]), "search": {"mode": "include"}})
        bundle: Json = {"resourceType": "Bundle", "type": "searchset", "total": len(items), "entry": entries,
                        "link": [{"relation": "self", "url": self.base + raw_path[len('/fhir'):]}]}
        if offset + count < len(items):
            nq = dict(q, _offset=str(offset + count))
            bundle["link"].append({"relation": "next", "url": f"{self.base}/{rtype}?{urlencode(nq)}"})
        return bundle

    def type_history(self, rtype: str, q: dict[str, str]) -> Json:
        since = datetime.fromisoformat(q["_since"].replace("Z", "+00:00")) if "_since" in q else None
        entries = []
        for (t, rid), hist in self.versions.items():
            if t != rtype:
                continue
            for i, r in enumerate(hist):
                when = self.stamps[(t, rid)][i]
                if since and when < since:
                    continue
                url = f"{rtype}/{rid}/_history/{i + 1}"
                if r is None:
                    entries.append({"fullUrl": f"{self.base}/{url}", "request": {"method": "DELETE", "url": f"{rtype}/{rid}"},
                                    "response": {"status": "204", "etag": f'W/"{i + 1}"', "lastModified": ts(when)}, "_when": when})
                else:
                    entries.append({"fullUrl": f"{self.base}/{url}", "resource": copy.deepcopy(r),
                                    "request": {"method": "PUT" if i else "POST", "url": f"{rtype}/{rid}"},
                                    "response": {"status": "200", "etag": f'W/"{i + 1}"'}, "_when": when})
        entries.sort(key=lambda e: e["_when"], reverse=True)
        for e in entries:
            del e["_when"]
        return {"resourceType": "Bundle", "type": "history", "total": len(entries), "entry": entries}
