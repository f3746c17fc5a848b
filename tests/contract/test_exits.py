"""Contract: each vendor's exit request as its API documents it, and the failure answers (issue 17).

respx stands in for the vendors (their APIs cannot be reached from here); the webhook exit goes to
a real receiver in tests/delivery/test_exits_pipeline.py. Exits carry the exit event's name, the
pseudonymous key and ids only: never a reason."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import httpx
import pytest
import respx

from middleware.config.connectors import BrazeConfig, HubSpotConfig, IterableConfig, SegmentConfig, SfmcConfig
from middleware.config.destinations import Destination, ExitSettings
from middleware.delivery.connectors.braze import BrazeConnector
from middleware.delivery.connectors.hubspot import HubSpotConnector
from middleware.delivery.connectors.iterable import IterableConnector
from middleware.delivery.connectors.segment import SegmentConnector
from middleware.delivery.connectors.sfmc import SfmcConnector
from middleware.delivery.registry import AuthFailure, Delivered, ExitCheck, Outbound, Permanent, Retry, SecretSource

pytestmark = pytest.mark.anyio

SFMC_AUTH = "https://mc-tenant1.auth.marketingcloudapis.com/v2/token"
SFMC_REST = "https://mc-tenant1.rest.marketingcloudapis.com"
ENV = SecretSource({"SFMC_ID": "cid", "SFMC_SECRET": "cs", "BRAZE_KEY": "bk", "HS_TOKEN": "ht", "SEG_KEY": "sk",
                    "ITER_KEY": "ik"})
AT = datetime(2025, 3, 5, 8, 0, tzinfo=timezone.utc)


def exit_item(n: int = 1) -> Outbound:
    """An exit as the worker builds it: the exit event's name, ids only."""
    return Outbound(delivery_id=n, idempotency_key=f"cx_{n:040d}", destination="d", trigger_id=100 + n,
                    trigger_name="careloop_exit", rule_id="appointment-reminder", purpose="treatment",
                    contact_key=f"ck_{n:04d}", payload={"journey": "reminders", "trigger_id": 100 + n}, occurred_at=AT)


def sfmc(http: httpx.AsyncClient, clock, versions: list[int] | None = None) -> SfmcConnector:  # type: ignore[no-untyped-def]
    c = SfmcConnector("sfmc", SfmcConfig(subdomain="mc-tenant1", client_id_env="SFMC_ID", client_secret_env="SFMC_SECRET",
                                         event_definition_key="APIEvent-remind"), http, ENV, clock=clock)
    c.exit_settings = ExitSettings(journey_key="remind-journey", versions=versions or [])
    return c


def sfmc_token() -> httpx.Response:
    return httpx.Response(200, json={"access_token": "t", "expires_in": 1079, "rest_instance_url": SFMC_REST + "/"})


@respx.mock
async def test_sfmc_contact_exit_request_and_refusals(http, clock):  # type: ignore[no-untyped-def]
    respx.post(SFMC_AUTH).mock(return_value=sfmc_token())
    route = respx.post(f"{SFMC_REST}/interaction/v1/interactions/contactexit").mock(return_value=httpx.Response(202, json={
        "errors": [{"contactKey": "ck_0002", "definitionKey": "remind-journey",
                    "status": [{"version": 1, "message": "Exit request Ignored - Invalid Interaction Name."}]}]}))
    out = await sfmc(http, clock, versions=[1, 2]).send_exits([exit_item(1), exit_item(2)])
    assert json.loads(route.calls.last.request.content) == [
        {"ContactKey": "ck_0001", "DefinitionKey": "remind-journey", "Versions": [1, 2]},
        {"ContactKey": "ck_0002", "DefinitionKey": "remind-journey", "Versions": [1, 2]}]
    assert route.calls.last.request.headers["authorization"] == "Bearer t"
    assert isinstance(out[0], Delivered) and out[0].confirmation == "pending" and out[0].status_code == 202
    assert isinstance(out[1], Permanent) and "Invalid Interaction Name" in out[1].reason


@respx.mock
async def test_sfmc_contact_exit_batches_of_50(http, clock):  # type: ignore[no-untyped-def]
    respx.post(SFMC_AUTH).mock(return_value=sfmc_token())
    route = respx.post(f"{SFMC_REST}/interaction/v1/interactions/contactexit").mock(
        return_value=httpx.Response(202, json={"errors": []}))
    out = await sfmc(http, clock).send_exits([exit_item(n) for n in range(1, 121)])
    assert [len(json.loads(c.request.content)) for c in route.calls] == [50, 50, 20]
    assert all(isinstance(o, Delivered) for o in out)
    assert "Versions" not in json.loads(route.calls[0].request.content)[0]  # no versions configured: all of them


@respx.mock
async def test_sfmc_exit_status_confirms_pending_and_fails(http, clock):  # type: ignore[no-untyped-def]
    respx.post(SFMC_AUTH).mock(return_value=sfmc_token())
    status = respx.post(f"{SFMC_REST}/interaction/v1/interactions/contactexit/status").mock(return_value=httpx.Response(200, json=[
        {"contactKey": "ck_0001", "definitionKey": "remind-journey",
         "status": [{"version": 1, "message": "Exit process Completed.", "definitionInstanceId": "d-1"}]},
        {"contactKey": "ck_0002", "definitionKey": "remind-journey",
         "status": [{"version": 1, "message": "Exit process Completed."},
                    {"version": 2, "message": "Exit request received for processing"}]},
        {"contactKey": "ck_0003", "definitionKey": "remind-journey",
         "status": [{"version": 1, "message": "Exit request Ignored - Invalid Interaction Name."}]},
    ]))
    checks = await sfmc(http, clock).confirm_exits([exit_item(1), exit_item(2), exit_item(3), exit_item(4)])
    assert [c.state for c in checks] == ["confirmed", "pending", "failed", "pending"]
    assert json.loads(status.calls.last.request.content)[0] == {"ContactKey": "ck_0001", "DefinitionKey": "remind-journey"}


@respx.mock
async def test_sfmc_exit_throttled_and_auth(http, clock):  # type: ignore[no-untyped-def]
    respx.post(SFMC_AUTH).mock(side_effect=[sfmc_token(), httpx.Response(401)])
    respx.post(f"{SFMC_REST}/interaction/v1/interactions/contactexit").mock(
        side_effect=[httpx.Response(429, headers={"Retry-After": "7"}), httpx.Response(401)])
    c = sfmc(http, clock)
    [throttled] = await c.send_exits([exit_item(1)])
    assert isinstance(throttled, Retry) and throttled.after_s == 7
    [refused] = await c.send_exits([exit_item(2)])
    assert isinstance(refused, AuthFailure)


@respx.mock
async def test_sfmc_entry_is_accepted_not_entered(http, clock, item_factory):  # type: ignore[no-untyped-def]
    respx.post(SFMC_AUTH).mock(return_value=sfmc_token())
    respx.post(f"{SFMC_REST}/interaction/v1/events").mock(return_value=httpx.Response(201, json={"eventInstanceId": "ev-9"}))
    [out] = await sfmc(http, clock).send_batch([item_factory(1)])
    assert isinstance(out, Delivered) and out.confirmation == "accepted" and out.vendor_ref == "ev-9"


@respx.mock
async def test_braze_exit_is_the_canvas_exception_event(http, clock):  # type: ignore[no-untyped-def]
    route = respx.post("https://rest.iad-01.braze.com/users/track").mock(return_value=httpx.Response(201, json={
        "message": "success", "errors": [{"type": "'external_id' is required", "input_array": "events", "index": 1}]}))
    c = BrazeConnector("braze", BrazeConfig(rest_endpoint="https://rest.iad-01.braze.com", api_key_env="BRAZE_KEY",
                                            mode="canvas", canvas_id="cv-1"), http, ENV, clock=clock)
    c.exit_settings = ExitSettings(event_name="careloop_exit")
    out = await c.send_exits([exit_item(1), exit_item(2)])
    body = json.loads(route.calls.last.request.content)
    assert body == {"events": [
        {"external_id": "ck_0001", "name": "careloop_exit", "time": "2025-03-05T08:00:00.000Z",
         "properties": {"journey": "reminders", "trigger_id": 101}},
        {"external_id": "ck_0002", "name": "careloop_exit", "time": "2025-03-05T08:00:00.000Z",
         "properties": {"journey": "reminders", "trigger_id": 102}}]}
    assert route.calls.last.request.headers["authorization"] == "Bearer bk"
    assert isinstance(out[0], Delivered) and isinstance(out[1], Permanent)


@respx.mock
async def test_hubspot_exit_sets_the_unenrollment_property(http, clock):  # type: ignore[no-untyped-def]
    route = respx.post("https://api.hubapi.com/crm/v3/objects/contacts/batch/update").mock(return_value=httpx.Response(207, json={
        "status": "COMPLETE", "results": [{"id": "ck_0001"}],
        "errors": [{"status": "error", "category": "OBJECT_NOT_FOUND", "message": "not found",
                    "context": {"ids": ["ck_0002"]}}]}))
    c = HubSpotConnector("hubspot", HubSpotConfig(access_token_env="HS_TOKEN", event_name="pe123_remind", identity="objectId"),
                         http, ENV, clock=clock)
    c.exit_settings = ExitSettings(property="careloop_exited_at")
    out = await c.send_exits([exit_item(1), exit_item(2)])
    body = json.loads(route.calls.last.request.content)
    assert body == {"inputs": [{"id": "ck_0001", "properties": {"careloop_exited_at": "1741161600000"}},
                               {"id": "ck_0002", "properties": {"careloop_exited_at": "1741161600000"}}]}
    assert route.calls.last.request.headers["authorization"] == "Bearer ht"
    assert isinstance(out[0], Delivered)
    assert isinstance(out[1], Permanent) and "OBJECT_NOT_FOUND" in out[1].reason


@respx.mock
async def test_hubspot_exit_by_email_names_the_id_property(http, clock):  # type: ignore[no-untyped-def]
    route = respx.post("https://api.hubapi.com/crm/v3/objects/contacts/batch/update").mock(
        return_value=httpx.Response(200, json={"status": "COMPLETE", "results": []}))
    c = HubSpotConnector("hubspot", HubSpotConfig(access_token_env="HS_TOKEN", event_name="pe123_remind", identity="email"),
                         http, ENV, clock=clock)
    c.exit_settings = ExitSettings(property="careloop_exited_at")
    assert isinstance((await c.send_exits([exit_item(1)]))[0], Delivered)
    assert json.loads(route.calls.last.request.content)["inputs"][0]["idProperty"] == "email"


@respx.mock
async def test_segment_exit_is_a_track_with_its_message_id(http, clock):  # type: ignore[no-untyped-def]
    route = respx.post("https://api.segment.io/v1/track").mock(return_value=httpx.Response(200, json={"success": True}))
    c = SegmentConnector("segment", SegmentConfig(write_key_env="SEG_KEY", call="identify"), http, ENV, clock=clock)
    [out] = await c.send_exits([exit_item(1)])
    body = json.loads(route.calls.last.request.content)
    assert {k: body[k] for k in ("type", "userId", "event", "properties", "messageId")} == {
        "type": "track", "userId": "ck_0001", "event": "careloop_exit",
        "properties": {"journey": "reminders", "trigger_id": 101}, "messageId": f"cx_{1:040d}"}
    assert isinstance(out, Delivered)


@respx.mock
async def test_iterable_exit_event_with_its_id(http, clock):  # type: ignore[no-untyped-def]
    route = respx.post("https://api.iterable.com/api/events/track").mock(
        return_value=httpx.Response(200, json={"msg": "", "code": "Success", "params": None}))
    c = IterableConnector("iterable", IterableConfig(api_key_env="ITER_KEY", campaign_id=5), http, ENV, clock=clock)
    [out] = await c.send_exits([exit_item(1)])
    body = json.loads(route.calls.last.request.content)
    assert body == {"id": f"cx_{1:040d}", "eventName": "careloop_exit", "userId": "ck_0001",
                    "dataFields": {"journey": "reminders", "trigger_id": 101}, "createdAt": int(AT.timestamp())}
    assert route.calls.last.request.headers["api-key"] == "ik"
    assert isinstance(out, Delivered)


def test_exit_settings_are_checked_per_vendor() -> None:
    base = {"name": "d", "baa": True}
    with pytest.raises(ValueError, match="journey_key"):
        Destination(type="sfmc", exit={}, **base)
    with pytest.raises(ValueError, match="property"):
        Destination(type="hubspot", exit={}, **base)
    with pytest.raises(ValueError, match="utk"):
        Destination(type="hubspot", exit={"property": "p"}, config={"identity": "utk"}, **base)
    assert Destination(type="braze", exit={}, **base).exit == ExitSettings()


async def test_a_connector_without_exits_refuses_them(http, clock) -> None:  # type: ignore[no-untyped-def]
    from middleware.delivery.connectors.webhook import WebhookConnector
    from middleware.delivery.registry import Connector

    class NoExit(Connector):
        type_name = "noexit"
        Config = SegmentConfig

        async def send_batch(self, items):  # type: ignore[no-untyped-def]
            return []

    [out] = await NoExit("n", SegmentConfig(write_key_env="x"), http, ENV).send_exits([exit_item(1)])
    assert isinstance(out, Permanent) and "no exit mechanism" in out.reason
    assert WebhookConnector.send_exits is not Connector.send_exits
    assert (await NoExit("n", SegmentConfig(write_key_env="x"), http, ENV).confirm_exits([exit_item(1)])) == [
        ExitCheck("confirmed", "no confirmation step")]
