"""``/playground``: the rules playground (issue 15; analysts).

Paste an HL7 v2 message (or batch) or a FHIR resource/Bundle, or pick a stored inbound message by
its id, pick a time (the site's zone; default now), and see what careloop would do: the
``careloop explain`` trace (:func:`middleware.pipeline.explain.explain`, the same code), the
timeline of triggers (due times, waits, cancellations, caps, quiet hours) and the exact body each
destination would receive. A dry run: a throw-away database, nothing stored or sent.

Also ``careloop mappings test`` (the golden tests, :func:`~middleware.pipeline.explain.golden`)
and ``careloop mappings validate`` (findings with file:line, :func:`~middleware.pipeline.explain.validate`).

Privacy: the pasted text travels in a POST body only (CSRF-checked, at most ``MAX_INPUT`` bytes,
refused before it is parsed when larger), is never logged nor echoed back unmasked, and what is
shown (the input, resources, payloads, bodies) is masked by :mod:`middleware.console.mask` plus
person-like fields of payloads (names, birth dates, contact details, MRNs).
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import orjson
from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import Response

from ...config.policy import looks_sensitive_value
from ...pipeline.explain import ClockBackwards, explain, golden, split_inputs, validate
from ...rules.journeys import format_timeline
from ...storage.queries import operator as oq
from ...storage.sql import unit
from .. import access as a
from ..mask import MASK, mask_fhir, mask_hl7
from ..web import render

router = APIRouter()

#: largest pasted input accepted (bytes of the whole form): an ORU with a long report fits
MAX_INPUT = 256 * 1024
#: payload/body keys that carry a person's identity or contact details (masked when shown)
PERSON_KEYS = frozenset({
    "name", "names", "family", "given", "prefix", "suffix", "first_name", "last_name", "firstname", "lastname",
    "full_name", "birthdate", "dob", "birth_date", "telecom", "phone", "mobile", "email", "address", "line",
    "postalcode", "postal_code", "zip", "mrn", "ssn", "identifier", "identifiers", "patient_key", "patientkey",
    "photo", "contact", "display",
})
HORIZONS = (0, 1, 7, 14, 30, 60)


def mask_value(value: Any) -> Any:
    """A payload, body or resource for display: FHIR person elements, person-like keys, and values
    that look like a phone number, e-mail address or SSN become ``***``; a contact key that is not a
    pseudonymous ``ck_`` key (an MRN, under an ``identifiers: mrn`` policy) too."""
    value = mask_fhir(value)

    def walk(v: Any, key: str | None = None) -> Any:
        if isinstance(v, dict):
            return {k: (MASK if (k.lower() in PERSON_KEYS and v[k] not in (None, "", [], {})) else walk(v[k], k)) for k in v}
        if isinstance(v, list):
            return [walk(e, key) for e in v]
        if isinstance(v, str):
            if key == "contact_key" and not v.startswith("ck_"):
                return MASK
            if looks_sensitive_value(v) in ("ssn", "phone", "email"):
                return MASK
        return v

    return walk(value)


def masked_input(data: bytes) -> str:
    """The input as shown back: HL7 with identifying segments masked, FHIR JSON masked, anything else withheld."""
    text = data.decode("utf-8", "replace").lstrip("\x0b\ufeff \r\n").split("\x1c")[0]
    if text.startswith(("MSH", "FHS", "BHS")):
        return "\n".join(mask_hl7(text).split("\r"))
    try:
        return orjson.dumps(mask_value(orjson.loads(data)), option=orjson.OPT_INDENT_2).decode()
    except (orjson.JSONDecodeError, TypeError):
        return "(not shown: neither HL7 v2 nor JSON)"


def shown(value: Any) -> str:
    return orjson.dumps(mask_value(value), option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()


def _runtime(request: Request) -> Any:
    return request.app.state.runtime


async def limit_size(request: Request) -> None:
    """Refuse (413) a body larger than ``MAX_INPUT`` before anything parses it."""
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        if request.method == "POST":
            raise HTTPException(411, "a Content-Length is required")
        return
    if int(length) > MAX_INPUT + 4096:
        raise HTTPException(413, f"the input is larger than {MAX_INPUT // 1024} KiB")


def ruleset_info(request: Request) -> dict[str, Any]:
    """The loaded rule set's version, and what ``careloop mappings validate`` says of the files now."""
    rt = _runtime(request)
    rs = rt.ruleset()
    directory = Path(rt.settings.mappings_dir)
    on_disk, diags = validate(directory)
    base = directory.resolve()

    def rel(p: str) -> str:
        try:
            return str(Path(p).resolve().relative_to(base))
        except ValueError:
            return p

    findings = [{"where": f"{rel(d.path)}:{d.line}:{d.col}", "level": d.level, "code": d.code,
                 "message": d.message.replace(str(base) + "/", "").replace(str(directory) + "/", "")}
                for d in sorted(diags, key=lambda d: {"error": 0, "warning": 1}.get(d.level, 2))]
    levels = {lv: sum(1 for d in diags if d.level == lv) for lv in ("error", "warning", "info")}
    return {"version": rs.version, "rules": len(rs.rules), "destinations": len(rs.destinations), "levels": levels,
            "disk_version": on_disk.version if on_disk is not None else None, "disk_ok": on_disk is not None,
            "findings": findings, "zone": rs.settings.site_timezone}


def _page(request: Request, status: int = 200, **ctx: Any) -> Response:
    rs = _runtime(request).ruleset()
    zone = ZoneInfo(rs.settings.site_timezone)
    defaults = {"result": None, "golden": None, "error": None, "input_shown": None, "horizons": HORIZONS,
                "horizon": 30, "at_default": datetime.now(zone).strftime("%Y-%m-%dT%H:%M"), "info": ruleset_info(request)}
    return render(request, "playground.html", defaults | ctx, status=status)


@router.get("/playground")
def playground(request: Request, viewer: Annotated[a.Viewer, a.need(a.PLAYGROUND)]) -> Response:
    return _page(request)


def _result_view(out: dict[str, Any]) -> dict[str, Any]:
    """The explain output as the page shows it: masked resources, payloads and bodies, pretty JSON."""
    events = []
    for e in out["events"]:
        res = e.get("resource") or {}
        events.append({
            "input": e["input"], "error": e.get("error"), "type": e.get("type"), "at": e.get("at"),
            "previous_status": e.get("previous_status"), "status": e.get("status"),
            "resource_ref": f"{res.get('resourceType')}/{res.get('id')}" if res else None,
            "resource": shown(res) if res else None,
            "rules": [{**r, "payload": shown(r["payload"]) if r.get("payload") is not None else None,
                       "destinations": {n: {"form": d["form"], "body": shown(d["body"]), "stripped": d["stripped"]}
                                        for n, d in (r.get("destinations") or {}).items()}}
                      for r in e.get("rules") or []],
        })
    return {"now": out["now"], "version": out["ruleset_version"], "events": events, "timeline": out["timeline"],
            "journey": out["journey"], "journeys": format_timeline(out["journeys"]),
            "notes": [{"input": i, "note": n} for i, n in out["notes"]]}


@router.post("/playground/explain")
def playground_explain(request: Request, _size: Annotated[None, Depends(limit_size)],
                       viewer: Annotated[a.Viewer, a.need(a.PLAYGROUND)],
                       message: Annotated[str, Form()] = "", message_id: Annotated[str, Form()] = "",
                       at: Annotated[str, Form()] = "", horizon: Annotated[str, Form()] = "30") -> Response:
    rt = _runtime(request)
    rs = rt.ruleset()
    partial = bool(request.headers.get("hx-request"))
    template = "playground_result.html" if partial else "playground.html"

    def answer(status: int = 200, **ctx: Any) -> Response:
        base = {"result": None, "error": None, "input_shown": None}
        if partial:
            return render(request, template, base | ctx, status=200 if status < 500 else status)
        zone = ZoneInfo(rs.settings.site_timezone)
        full = {"golden": None, "horizons": HORIZONS, "horizon": 30, "info": ruleset_info(request),
                "at_default": datetime.now(zone).strftime("%Y-%m-%dT%H:%M")}
        return render(request, template, full | base | ctx, status=status)

    data: bytes
    name = "pasted"
    if message_id.strip():
        if not message_id.strip().isdigit():
            return answer(400, error="A stored message is picked by its number (the id in the message browser).")
        with unit(rt.engine) as u:
            got = oq.message_raw(u, int(message_id.strip()))
        if got is None or not got.raw:
            return answer(404, error=f"No stored message {int(message_id.strip())}.")
        data, name = bytes(got.raw), f"message {int(message_id.strip())}"
    elif message.strip():
        data = message.replace("\r\n", "\r").replace("\n", "\r").encode() if message.lstrip().startswith(("MSH", "FHS", "BHS")) \
            else message.encode()
        if len(data) > MAX_INPUT:
            return answer(413, error=f"The input is larger than {MAX_INPUT // 1024} KiB.")
    else:
        return answer(400, error="Paste a message or resource, or give a stored message's number.")
    zone = ZoneInfo(rs.settings.site_timezone)
    try:
        now = datetime.fromisoformat(at) if at.strip() else datetime.now(zone)
    except ValueError:
        return answer(400, error="The time is not a date and time (YYYY-MM-DDTHH:MM).")
    now = now if now.tzinfo else now.replace(tzinfo=zone)
    days = float(horizon) if horizon in {str(h) for h in HORIZONS} else 0.0
    inputs, problems = split_inputs(name, data)
    try:
        out = explain(rs, inputs, now, horizon_days=days)
    except ClockBackwards as exc:
        return answer(400, error=str(exc))
    view = _result_view(out)
    view["problems"] = problems
    return answer(result=view, input_shown=masked_input(data), horizon_days=days)


@router.post("/playground/golden")
def playground_golden(request: Request, viewer: Annotated[a.Viewer, a.need(a.PLAYGROUND)]) -> Response:
    rt = _runtime(request)
    rs = rt.ruleset()
    results, diags = golden(Path(rs.directory), rs)
    failed = [r for r in results if not r.ok]
    view = {"passed": len(results) - len(failed), "failed": len(failed), "version": rs.version,
            "cases": [{"where": f"{Path(r.path).name}:{r.line}", "name": r.name, "ok": r.ok,
                       "failures": ([r.error] if r.error else []) + list(r.failures), "timeline": list(r.timeline)}
                      for r in results],
            "findings": [str(d) for d in diags]}
    if request.headers.get("hx-request"):
        return render(request, "playground_golden.html", {"golden": view})
    return _page(request, golden=view)
