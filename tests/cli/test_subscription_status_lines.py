"""``careloop subscriptions status``: one line per subscription, the server's view joined with careloop's."""
from __future__ import annotations

from middleware.cli.subscriptions import TAG_SYSTEM, subscription_lines


def _sub(sid: str, status: str, error: str | None = None) -> dict[str, object]:
    return {"resourceType": "Subscription", "id": sid, "status": status, "criteria": "https://careloop.dev/fhir/SubscriptionTopic/appointment",
            "meta": {"tag": [{"system": TAG_SYSTEM, "code": "careloop-topic-appointment"}]}, **({"error": error} if error else {})}


def test_server_status_last_event_and_gap_being_recovered() -> None:
    server = {"7": _sub("7", "error", "operator: endpoint retired"), "8": _sub("8", "active")}
    seen = {"7": {"last_event": 9, "missing": [7], "gaps": 1, "resets": 0, "last_type": "event-notification"},
            "gone": {"last_event": 3, "missing": [], "gaps": 0}}
    lines = subscription_lines(server, seen, pending=["Appointment"])
    assert len(lines) == 3
    [seven] = [ln for ln in lines if "Subscription/7 " in ln]
    assert "careloop-topic-appointment: server: error (operator: endpoint retired); last event 9" in seven
    assert "gaps 1" in seven and "gap being recovered: missing 7" in seven
    [eight] = [ln for ln in lines if "Subscription/8 " in ln]
    assert "server: active; no notification seen" in eight
    [gone] = [ln for ln in lines if "Subscription/gone" in ln]
    assert "server: not found; last event 3" in gone and "missing" not in gone


def test_gap_recovered_once_no_sweep_is_pending() -> None:
    seen = {"7": {"last_event": 9, "missing": list(range(1, 15)), "gaps": 2}}
    [line] = subscription_lines({"7": _sub("7", "active")}, seen, pending=[])
    assert "gap recovered by reconciliation: missing 1,2,3,4,5,6,7,8,9,10..." in line
