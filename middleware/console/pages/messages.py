"""``/messages``: the message browser (filters, keyset pages) and ``/messages/{id}``: one stored
message segment by segment (HL7 v2) or as JSON (FHIR), the ACK careloop answered, the events it
produced, replay for an errored one, and an audited reveal.

Pages read what ``GET /api/messages`` reads (``api.operator.message_page``) and replay with what
``POST /api/messages/{id}/replay`` runs (``api.operator.replay_message``). Identifying fields are
masked (``mask``) unless the response is the answer to a reveal: ``POST .../reveal`` with a
reason, by someone holding ``reveal``, audited as ``console.reveal``; nothing is cached
(``Cache-Control: no-store``) and the URL never changes, so the unmasked view lives in that one
response. Filters are ids, types, statuses and times: no identifier ever appears in a URL.
"""
from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from ...api.operator import message_filter, message_page, replay_message
from ...delivery.admin_audit import record
from ...storage.queries import operator as q
from ...storage.sql import unit
from ...storage.statuses import InboundStatus
from .. import access as a
from ..hl7view import segments
from ..mask import mask_fhir, mask_hl7
from ..web import render

router = APIRouter()

PAGE = 50
#: statuses whose messages may be replayed from the console (they errored)
REPLAYABLE = frozenset({InboundStatus.FAILED, InboundStatus.REJECTED})


def _query(filters: dict[str, str], **extra: Any) -> str:
    """The query string of a page link: the filters in use and the keyset cursor."""
    items = [(k, v) for k, v in filters.items() if v]
    items += [(k, str(v)) for k, v in extra.items() if v is not None]
    return urlencode(items)


@router.get("/messages")
def messages(request: Request, viewer: Annotated[a.Viewer, a.need(a.MESSAGES)], source: str = "",
             message_type: str = "", control_id: str = "", status: str = "", since: str = "", until: str = "",
             errored: bool = False, before_id: int | None = None, after_id: int | None = None) -> Response:
    filters = {"source": source.strip(), "message_type": message_type.strip(), "control_id": control_id.strip(),
               "status": status, "since": since, "until": until}
    error = None
    try:
        where = message_filter(errored=errored, **filters)
    except HTTPException as exc:
        error, where = str(exc.detail), q.MessageFilter()
    rows, older, newer = message_page(request.app.state.runtime.engine, where, limit=PAGE, before_id=before_id,
                                      after_id=after_id)
    base = {**filters, "errored": "1" if errored else ""}
    return render(request, "messages.html", {
        "rows": rows, "filters": filters, "errored": errored, "statuses": [s.value for s in InboundStatus],
        "error": error, "older": _query(base, before_id=older) if older else None,
        "newer": _query(base, after_id=newer) if newer else None,
    })


def _detail(request: Request, viewer: a.Viewer, message_id: int, *, revealed: bool = False,
            replayed: bool = False, status: int = 200, reveal_error: str | None = None) -> Response:
    with unit(request.app.state.runtime.engine) as u:
        m = q.message(u, message_id)
        events = q.events_of_message(u, message_id) if m is not None else []
    if m is None:
        return render(request, "message.html", {"missing": message_id}, status=404)
    text = bytes(m.raw or b"").decode("utf-8", errors="replace")
    ack = bytes(m.ack or b"").decode("utf-8", errors="replace")
    view: dict[str, Any] = {"hl7": None, "json": None, "text": None}
    if text.lstrip().startswith(("MSH", "FHS", "BHS")):
        view["hl7"] = segments(text if revealed else mask_hl7(text))
    else:
        try:
            parsed = orjson.loads(text) if text.strip() else None
            view["json"] = orjson.dumps(parsed if revealed else mask_fhir(parsed), option=orjson.OPT_INDENT_2).decode()
        except orjson.JSONDecodeError:
            view["text"] = text if revealed else None  # unparseable: shown only when revealed
    return render(request, "message.html", {
        "m": m, "events": events, "view": view, "ack": segments(mask_hl7(ack)) if ack.startswith("MSH") else None,
        "ack_text": ack if ack and not ack.startswith("MSH") else None, "revealed": revealed, "replayed": replayed,
        "can_replay": viewer.can(a.MESSAGES_REPLAY) and (m.status in REPLAYABLE or m.error is not None),
        "can_reveal": viewer.can(a.REVEAL), "reveal_error": reveal_error,
    }, status=status)


@router.get("/messages/{message_id}")
def message(request: Request, message_id: int, viewer: Annotated[a.Viewer, a.need(a.MESSAGES)],
            replayed: bool = False) -> Response:
    return _detail(request, viewer, message_id, replayed=replayed)


@router.post("/messages/{message_id}/reveal")
def reveal(request: Request, message_id: int, viewer: Annotated[a.Viewer, a.need(a.MESSAGES, a.REVEAL)],
           reason: Annotated[str, Form()] = "") -> Response:
    """The unmasked message, in this response only; the reveal (who, which message, why) is audited first."""
    reason = reason.strip()
    engine = request.app.state.runtime.engine
    if len(reason) < 4:
        record(engine, actor=viewer.name, role=viewer.role_label, channel="console", action="console.reveal",
               outcome="refused", target_kind="message", target_id=str(message_id), reason=reason or None)
        return _detail(request, viewer, message_id, status=422, reveal_error="Give a reason (at least 4 characters) to reveal.")
    record(engine, actor=viewer.name, role=viewer.role_label, channel="console", action="console.reveal",
           target_kind="message", target_id=str(message_id), reason=reason)
    return _detail(request, viewer, message_id, revealed=True)


@router.post("/messages/{message_id}/replay")
def replay(request: Request, message_id: int, viewer: Annotated[a.Viewer, a.need(a.MESSAGES_REPLAY)]) -> Response:
    """Process an errored message again (the API's replay), audited as ``message.replay``."""
    rt = request.app.state.runtime
    with unit(rt.engine) as u:
        m = q.message(u, message_id)
    if m is None or not (m.status in REPLAYABLE or m.error is not None):
        record(rt.engine, actor=viewer.name, role=viewer.role_label, channel="console", action="message.replay",
               outcome="refused", target_kind="message", target_id=str(message_id))
        return render(request, "message.html", {"missing": message_id, "not_replayable": m is not None}, status=409 if m else 404)
    replay_message(rt, message_id)
    record(rt.engine, actor=viewer.name, role=viewer.role_label, channel="console", action="message.replay",
           target_kind="message", target_id=str(message_id), detail={"previous_status": m.status})
    return RedirectResponse(f"/messages/{message_id}?replayed=1", status_code=303)
