"""Templates and the page frame: ``render(request, template, context)`` fills a Jinja2 template
(autoescaped) with the viewer, the CSRF token and the navigation their permissions allow.

Page modules (``pages/*.py``) each define ``router`` and add their entries to ``NAV`` order here;
a page's template extends ``base.html`` and fills ``title`` and ``content``.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from . import access as a

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")


@dataclass(frozen=True)
class NavItem:
    path: str
    label: str
    permission: str


NAV: tuple[NavItem, ...] = (
    NavItem("/", "Overview", a.OVERVIEW),
    NavItem("/messages", "Messages", a.MESSAGES),
    NavItem("/patients", "Patients", a.TIMELINE),
    NavItem("/journeys", "Journeys", a.JOURNEYS),
    NavItem("/playground", "Playground", a.PLAYGROUND),
    NavItem("/deliveries", "Deliveries", a.DELIVERIES),
    NavItem("/privacy", "Privacy", a.PRIVACY),
    NavItem("/audit", "Audit", a.AUDIT),
)


def when(ts: float | None) -> str:
    """A UTC timestamp as the console shows it."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


TEMPLATES.env.filters["when"] = when


def render(request: Request, template: str, context: dict[str, Any] | None = None, status: int = 200) -> HTMLResponse:
    viewer: a.Viewer | None = getattr(request.state, "viewer", None)
    nav = [n for n in NAV if viewer is not None and viewer.can(n.permission)]
    ctx = {"viewer": viewer, "csrf": viewer.csrf if viewer else "", "nav": nav, "path": request.url.path,
           **(context or {})}
    return TEMPLATES.TemplateResponse(request, template, ctx, status_code=status)
