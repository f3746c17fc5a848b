"""A FastAPI TestClient over a careloop Runtime sharing a pipeline's database (no listeners started)."""
from __future__ import annotations

from fastapi.testclient import TestClient

from middleware.api.app import create_app
from middleware.service import Runtime
from middleware.settings import Settings

from .delivery_pipeline import CONTACT_SECRET, Pipeline


def api_for(p: Pipeline) -> TestClient:
    rt = Runtime(Settings(database_url=p.db_url, mappings_dir=p.mappings, contact_key_secret=CONTACT_SECRET))
    return TestClient(create_app(rt))
