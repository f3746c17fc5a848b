"""The console (issue 15): server-rendered pages for analysts, operators and auditors, served by
careloop itself on the API's port.

A thin face like the API and the CLI: pages read the same functions the operator API serves and
change nothing the API could not. :func:`mount` adds the pages (every module of ``pages`` that
defines ``router``), the static assets (shipped in this package; no CDN) and the security headers.

- ``access``: roles and permissions; ``need(permission)`` guards a page or an action.
- ``users``: the users file (argon2 hashes); ``sessions``: server-side sessions behind an
  ``HttpOnly; Secure; SameSite=Strict`` cookie, with a per-session CSRF token.
- ``web``: templates and ``render``; ``headers``: CSP and the other response headers.
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from .access import install_handlers
from .headers import SecurityHeaders

STATIC = Path(__file__).parent / "static"


def mount(app: FastAPI) -> None:
    """Add the console's pages, assets and headers to ``app`` (the API's application)."""
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    install_handlers(app)
    package = importlib.import_module(f"{__name__}.pages")
    for mod in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{package.__name__}.{mod.name}")
        router = getattr(module, "router", None)
        if router is not None:
            app.include_router(router, include_in_schema=False)
