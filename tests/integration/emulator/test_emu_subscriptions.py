"""Subscriptions: validation handshake, notifications (app and user changes), retries, drops, lifecycle,
expiry, renew and delete."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from .conftest import Graph, event_body, raw_token

pytestmark = pytest.mark.integration


def expiry(ctl, minutes=4000):
    return (ctl.clock() + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def subscribe(graph, ctl, receiver, **extra):
    body = {"changeType": "created,updated,deleted", "notificationUrl": receiver.url,
            "lifecycleNotificationUrl": receiver.url.replace("notifications", "lifecycle"),
            "resource": "/me/events", "expirationDateTime": expiry(ctl), "clientState": "s3cr3t-state", **extra}
    return graph("POST", "/subscriptions", json=body)


def test_handshake_and_notifications_for_app_and_user_changes(graph, ctl, receiver, user):
    r = subscribe(graph, ctl, receiver)
    assert r.status_code == 201, r.text
    sub = r.json()
    validations = [x for x in receiver.received if x["kind"] == "validation"]
    assert len(validations) == 2  # notification and lifecycle URLs
    assert validations[0]["token"].startswith("Validation: ")  # received URL-decoded, echoed as text/plain
    assert sub["clientState"] == "s3cr3t-state" and sub["changeType"] == "created,updated,deleted"

    ev = graph("POST", "/me/events", json=event_body("hello")).json()
    receiver.wait_for(lambda rec: len([x for x in rec if x["kind"] == "notification"]) >= 1)
    n = receiver.notifications()[0]
    assert n["subscriptionId"] == sub["id"] and n["clientState"] == "s3cr3t-state"
    assert n["changeType"] == "created" and n["tenantId"] == user["tenant_id"]
    assert n["resource"] == f"Users/{user['id']}/Events/{ev['id']}"
    assert n["resourceData"] == {"@odata.type": "#Microsoft.Graph.Event", "@odata.id": n["resource"],
                                 "@odata.etag": ev["@odata.etag"], "id": ev["id"]}

    ctl.user_update_event(user["id"], ev["id"], {"subject": "edited in Outlook"})
    ctl.user_delete_event(user["id"], ev["id"])
    receiver.wait_for(lambda rec: len(receiver.notifications()) >= 3)
    assert sorted(x["changeType"] for x in receiver.notifications()) == ["created", "deleted", "updated"]
    done = ctl.deliveries(kind="notification", outcome="delivered", at_least=3, timeout=5)["value"]
    assert len(done) >= 3


def test_failed_validation_fails_the_create(graph, ctl, receiver):
    receiver.validation = "wrong"
    r = subscribe(graph, ctl, receiver)
    assert r.status_code == 400 and r.json()["error"]["code"] == "ValidationError"
    receiver.validation = "500"
    assert subscribe(graph, ctl, receiver).status_code == 400
    receiver.validation = "block"  # answers too late
    ctl.set_notifications(validation_timeout=0.3)
    r = subscribe(graph, ctl, receiver)
    receiver.release.set()
    assert r.status_code == 400 and "timed out" in r.json()["error"]["message"]
    assert ctl.subscriptions() == []
    bad = graph("POST", "/subscriptions", json={"changeType": "created", "resource": "/me/events",
                                                "notificationUrl": "http://example.com/hook",
                                                "expirationDateTime": expiry(ctl)})
    assert bad.status_code == 400  # plain http is only accepted on loopback


def test_expiry_limits_renew_delete_and_no_notifications_after_expiry(emu, app, user, ctl, receiver):
    ctl.set_identity(access_token_lifetime=24 * 3600)  # so the token outlives the clock jump below
    graph = Graph(emu, raw_token(emu, app, user)["access_token"])
    assert subscribe(graph, ctl, receiver, expirationDateTime=expiry(ctl, 10081)).status_code == 400
    sub = subscribe(graph, ctl, receiver, expirationDateTime=expiry(ctl, 10)).json()
    exp = datetime.fromisoformat(sub["expirationDateTime"].replace("Z", "+00:00")[:26] + "+00:00")
    assert exp - ctl.clock() > timedelta(minutes=44)  # bumped to the 45-minute minimum
    renewed = graph("PATCH", f"/subscriptions/{sub['id']}", json={"expirationDateTime": expiry(ctl, 120)})
    assert renewed.status_code == 200
    ctl.advance_clock(minutes=121)
    assert graph("GET", f"/subscriptions/{sub['id']}").status_code == 404
    before = ctl.deliveries()["last_seq"]
    graph("POST", "/me/events", json=event_body("after expiry"))
    assert ctl.deliveries(after=before, kind="notification")["value"] == []

    second = subscribe(graph, ctl, receiver).json()
    assert graph("DELETE", f"/subscriptions/{second['id']}").status_code == 204
    assert graph("GET", f"/subscriptions/{second['id']}").status_code == 404


def test_retry_on_error_and_slow_answer_every_delivery_recorded(graph, ctl, receiver):
    sub = subscribe(graph, ctl, receiver).json()
    receiver.notify_statuses = [500]
    graph("POST", "/me/events", json=event_body("retry me"))
    first = ctl.deliveries(subscription=sub["id"], kind="notification", at_least=1, timeout=5)["value"]
    assert first[0]["outcome"] == "http_error" and first[0]["status"] == 500
    ctl.advance_clock(seconds=11)  # the retry is due 10 s later on the emulator clock
    both = ctl.deliveries(subscription=sub["id"], kind="notification", at_least=2, timeout=5)["value"]
    assert [d["outcome"] for d in both] == ["http_error", "delivered"]
    assert both[1]["attempt"] == 2

    ctl.set_notifications(delivery_timeout=0.3)
    receiver.block_notifications = True
    graph("POST", "/me/events", json=event_body("slow"))
    slow = ctl.deliveries(subscription=sub["id"], kind="notification", outcome="timeout", at_least=1,
                          timeout=5)["value"]
    assert slow
    receiver.release.set()
    receiver.block_notifications = False
    ctl.advance_clock(seconds=11)
    ok = ctl.deliveries(after=slow[-1]["seq"], subscription=sub["id"], outcome="delivered", at_least=1,
                        timeout=5)["value"]
    assert ok and ok[0]["payload"]["value"][0]["changeType"] == "created"


def test_dropped_notifications_are_recorded_but_never_sent(graph, ctl, receiver):
    sub = subscribe(graph, ctl, receiver).json()
    ctl.set_notifications(drop_next=1)
    graph("POST", "/me/events", json=event_body("lost"))
    graph("POST", "/me/events", json=event_body("kept"))
    kept = ctl.deliveries(subscription=sub["id"], kind="notification", outcome="delivered", at_least=1,
                          timeout=5)["value"]
    dropped = ctl.deliveries(subscription=sub["id"], outcome="dropped")["value"]
    assert len(dropped) == 1 and len(kept) == 1
    assert len(receiver.notifications()) == 1


def test_lifecycle_notifications_on_demand(graph, ctl, receiver):
    sub = subscribe(graph, ctl, receiver).json()
    for event in ("reauthorizationRequired", "missed", "subscriptionRemoved"):
        ctl.send_lifecycle(sub["id"], event)
    # Graph may put several notifications in one POST: count items, not requests.
    receiver.wait_for(lambda rec: len(receiver.notifications()) >= 3)
    got = [r for r in receiver.received if r["kind"] == "notification"]
    assert all(r["path"].endswith("/lifecycle") for r in got)
    events = sorted(v["lifecycleEvent"] for r in got for v in r["payload"]["value"])
    assert events == ["missed", "reauthorizationRequired", "subscriptionRemoved"]
    assert graph("GET", f"/subscriptions/{sub['id']}").status_code == 404
