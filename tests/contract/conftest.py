"""Shared fixtures for the connector contract tests (respx-mocked vendor APIs)."""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from middleware.delivery.registry import Outbound, SecretSource

T0 = datetime(2025, 3, 4, 12, 0, 0, tzinfo=timezone.utc)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    """A settable clock for token-expiry tests."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_item(n: int = 1, **overrides: Any) -> Outbound:
    fields: dict[str, Any] = {
        "delivery_id": n,
        "idempotency_key": f"idem-{n:04d}",
        "destination": "dest",
        "trigger_id": 100 + n,
        "trigger_name": "noshow_reengage",
        "rule_id": "noshow-v1",
        "purpose": "care_coordination",
        "contact_key": f"ck_{n:04d}",
        "payload": {"appointment_id": f"appt-{n}", "clinic": "north"},
        "occurred_at": datetime(2025, 3, 4, 9, 30, tzinfo=timezone.utc),
    }
    fields.update(overrides)
    return Outbound(**fields)


@pytest.fixture
def item_factory() -> Callable[..., Outbound]:
    return make_item


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def secrets(**env: str) -> SecretSource:
    return SecretSource(dict(env))
