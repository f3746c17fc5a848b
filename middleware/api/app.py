"""``create_app(runtime)``: the FastAPI application (no work at import time)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

import importlib
import pkgutil

from ..storage.queries.metrics import ping
from .body import ApiBodyLimit

if TYPE_CHECKING:
    from ..service import Runtime


def create_app(runtime: "Runtime") -> FastAPI:
    app = FastAPI(title="careloop", version="0.1.0", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.runtime = runtime
    app.add_middleware(ApiBodyLimit, limit=runtime.settings.http_max_api_bytes)
    _add_docs(app)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        ping(runtime.engine)
        return {"status": "ok", "ruleset_version": runtime.ruleset().version,
                "mllp_port": runtime.mllp.port if runtime.mllp else None, "worker": runtime.worker_mode()}

    # every module of this package that defines `router` contributes its routes
    package = importlib.import_module(__package__ or "middleware.api")
    for mod in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{package.__name__}.{mod.name}")
        router = getattr(module, "router", None)
        if router is not None:
            app.include_router(router)
    return app


def _add_docs(app: FastAPI) -> None:
    """``/openapi.json``, ``/docs`` and ``/redoc``, behind the API token when one is configured."""
    from .deps import require_token

    guard = [Depends(require_token)]

    @app.get("/openapi.json", include_in_schema=False, dependencies=guard)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=guard)
    def docs(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="careloop API")

    @app.get("/redoc", include_in_schema=False, dependencies=guard)
    def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title="careloop API")
