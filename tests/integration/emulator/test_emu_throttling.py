"""$batch, Outlook throttling (sliding window + 4-concurrency gate) and injected faults."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from .conftest import event_body

pytestmark = pytest.mark.integration


def batch_item(i, method="POST", url="/me/events", body=None, **extra):
    item = {"id": str(i), "method": method, "url": url, **extra}
    if body is not None:
        item["body"] = body
        item["headers"] = {"Content-Type": "application/json"}
    return item


def test_batch_limits_and_relative_urls(graph):
    too_many = [batch_item(i, "GET", "/me") for i in range(21)]
    assert graph("POST", "/$batch", json={"requests": too_many}).status_code == 400
    r = graph("POST", "/$batch", json={"requests": [batch_item(1, "GET", "https://graph.microsoft.com/v1.0/me"),
                                                   batch_item(2, "GET", "/me")]})
    assert r.status_code == 200
    by_id = {x["id"]: x for x in r.json()["responses"]}
    assert by_id["1"]["status"] == 400 and by_id["2"]["status"] == 200


def test_batch_creates_and_depends_on(graph, ctl, user):
    reqs = [batch_item(i, body=event_body(f"B{i}")) for i in range(1, 21)]
    r = graph("POST", "/$batch", json={"requests": reqs})
    assert r.status_code == 200
    statuses = {x["id"]: x["status"] for x in r.json()["responses"]}
    assert set(statuses.values()) == {201} and len(statuses) == 20
    assert len(ctl.events(user["id"])) == 20
    counters = ctl.counters(user["id"])["mailboxes"][user["id"]]
    assert counters["batch_inner"]["POST /events"] == 20

    chain = [batch_item(1, "GET", "/me/events/does-not-exist"),
             batch_item(2, "DELETE", "/me/events/also-missing", dependsOn=["1"]),
             batch_item(3, "GET", "/me", dependsOn=["2"])]
    out = {x["id"]: x["status"] for x in graph("POST", "/$batch", json={"requests": chain}).json()["responses"]}
    assert out == {"1": 404, "2": 424, "3": 424}


def test_batch_items_are_throttled_individually(graph, ctl, user):
    ctl.set_throttling(limit=3, window_seconds=600)
    reqs = [batch_item(i, "GET", "/me/events") for i in range(1, 6)]
    r = graph("POST", "/$batch", json={"requests": reqs})
    assert r.status_code == 200
    items = r.json()["responses"]
    throttled = [x for x in items if x["status"] == 429]
    assert len(throttled) == 2 and len([x for x in items if x["status"] == 200]) == 3
    assert int(throttled[0]["headers"]["Retry-After"]) > 0
    assert throttled[0]["body"]["error"]["code"] == "TooManyRequests"
    assert ctl.counters(user["id"])["totals"][user["id"]]["throttled"] == 2


def test_sliding_window_throttling_and_recovery_on_the_emulator_clock(graph, ctl, user):
    ctl.set_throttling(limit=5, window_seconds=600)
    statuses = [graph("GET", "/me/events").status_code for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    r = graph("GET", "/me/events")
    assert r.status_code == 429
    assert r.json() == {"error": {"code": "TooManyRequests", "innerError": r.json()["error"]["innerError"],
                                  "message": "Please retry again later."}}
    wait = int(r.headers["Retry-After"])
    assert 0 < wait <= 600
    ctl.advance_clock(seconds=wait)
    assert graph("GET", "/me/events").status_code == 200


def test_four_concurrent_requests_per_mailbox(graph, ctl, user):
    ctl.add_fault("hold", count=4, path_contains="/events")
    with ThreadPoolExecutor(max_workers=4) as pool:
        held = [pool.submit(graph, "GET", "/me/events") for _ in range(4)]
        assert ctl.wait_inflight(user["id"], at_least=4, timeout=10)["inflight"] == 4
        fifth = graph("GET", "/me/events")
        assert fifth.status_code == 429
        assert fifth.json()["error"] == {"code": "ApplicationThrottled",
                                         "message": "Application is over its MailboxConcurrency limit."}
        assert "Retry-After" in fifth.headers
        ctl.release_holds()
        assert [f.result().status_code for f in held] == [200] * 4
    assert graph("GET", "/me/events").status_code == 200


def test_injected_503_500_and_latency(graph, ctl):
    ctl.add_fault("503", count=1, retry_after=7)
    r = graph("GET", "/me/events")
    assert r.status_code == 503 and r.headers["Retry-After"] == "7"
    assert r.json()["error"]["code"] == "serviceNotAvailable"
    ctl.add_fault("500", count=1, method="POST")
    assert graph("GET", "/me/events").status_code == 200
    assert graph("POST", "/me/events", json=event_body()).status_code == 500
    ctl.add_fault("latency", count=1, latency_ms=300)
    r = graph("GET", "/me/events")
    assert r.status_code == 200 and r.elapsed.total_seconds() >= 0.3


def test_dropped_connection_and_lost_create_answer(graph, ctl, user):
    ctl.add_fault("drop", count=1)
    with pytest.raises(requests.ConnectionError):
        graph("GET", "/me/events")
    ctl.add_fault("lost_response", count=1, method="POST")
    body = event_body("stored but unanswered", transactionId="crm-7-v1")
    with pytest.raises(requests.ConnectionError):
        graph("POST", "/me/events", json=body)
    stored = ctl.events(user["id"])
    assert [e["subject"] for e in stored] == ["stored but unanswered"]
    retry = graph("POST", "/me/events", json=body)  # the client's retry with the same transactionId
    assert retry.status_code == 201 and retry.json()["id"] == stored[0]["id"]


def test_probabilistic_faults_are_reproducible_with_a_seed(graph, ctl):
    def run():
        ctl.clear_faults()
        ctl.add_fault("503", probability=0.5, seed=1234, retry_after=1)
        return [graph("GET", "/me").status_code for _ in range(12)]

    first, second = run(), run()
    assert first == second and {200, 503} == set(first)


def test_identity_faults(emu, ctl, app, user):
    from .conftest import raw_token

    ctl.add_fault("503", count=1, area="identity", path_contains="/token")
    with pytest.raises(AssertionError):
        raw_token(emu, app, user)
    assert raw_token(emu, app, user)["access_token"]


def test_an_outage_answers_503_to_everything_until_it_ends_by_itself(graph, ctl, user):
    ctl.add_fault("lost_response", method="POST")  # tried after the outage: nothing is stored meanwhile
    rule = ctl.outage(seconds=300, retry_after=5)
    down = [graph("GET", "/me/events"), graph("POST", "/me/events", json=event_body())]
    assert [(r.status_code, r.headers["Retry-After"], r.json()["error"]["code"]) for r in down] == [
        (503, "5", "serviceNotAvailable")
    ] * 2
    batch = graph("POST", "/$batch", json={"requests": [{"id": "1", "method": "GET", "url": "/me/events"}]})
    assert batch.status_code == 503  # the envelope itself meets the outage
    ctl.advance_clock(seconds=299)
    assert graph("GET", "/me/events").status_code == 503
    ctl.advance_clock(seconds=1)
    listed = graph("GET", "/me/events")
    assert listed.status_code == 200 and listed.json()["value"] == []  # over by itself; no create got through
    assert [f["ends_at"] for f in ctl.faults() if f["id"] == rule["id"]] == [rule["ends_at"]]


def test_a_fault_duration_must_be_a_positive_number(ctl):
    for bad in (0, -5, "soon", True):
        with pytest.raises(Exception, match="duration_seconds"):
            ctl.add_fault("503", duration_seconds=bad)
