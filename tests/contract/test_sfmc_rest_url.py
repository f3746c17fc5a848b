"""SFMC: the access token goes only to Marketing Cloud's REST domain, whatever the token response names."""
from __future__ import annotations

import httpx
import pytest
import respx

from middleware.delivery.connectors.sfmc import SfmcConfig, SfmcConnector
from middleware.delivery.registry import Delivered, SecretSource

pytestmark = pytest.mark.anyio

AUTH = "https://mc-tenant1.auth.marketingcloudapis.com/v2/token"
REST = "https://mc-tenant1.rest.marketingcloudapis.com"


def accepted(ref: str | None = None) -> Delivered:
    """An entry event Journey Builder took: recorded as accepted (no lookup of an entry is documented)."""
    return Delivered(201, "accepted (Journey Builder documents no lookup of an entry)", confirmation="accepted", vendor_ref=ref)


@respx.mock
async def test_foreign_rest_instance_url_in_token_response_is_ignored(http, clock, item_factory):
    respx.post(AUTH).mock(return_value=httpx.Response(200, json={
        "access_token": "tok-1", "expires_in": 1079, "rest_instance_url": "https://collector.example.net/"}))
    foreign = respx.post(url__startswith="https://collector.example.net").mock(return_value=httpx.Response(201))
    fire = respx.post(f"{REST}/interaction/v1/events").mock(return_value=httpx.Response(201, json={}))
    config = SfmcConfig(subdomain="mc-tenant1", client_id_env="ID", client_secret_env="SECRET",
                        event_definition_key="APIEvent-x")
    c = SfmcConnector("sfmc", config, http, SecretSource({"ID": "cid", "SECRET": "cs"}), clock=clock)
    assert await c.send_batch([item_factory(1)]) == [accepted()]
    assert not foreign.called and fire.call_count == 1
    assert fire.calls.last.request.headers["authorization"] == "Bearer tok-1"
