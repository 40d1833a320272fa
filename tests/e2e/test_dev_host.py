"""The dev host runs an app as the Functions host would, over real HTTP against real Azurite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
import requests
from azure.core.exceptions import ResourceNotFoundError

from local.azurite import Azurite
from shared.rules.settings import storage_settings
from shared.store.storage import Storage
from tests.conftest import ROOT, wait_until

pytestmark = pytest.mark.e2e
SAMPLE = "tests.e2e.sample_app:app"
SAMPLE_HOST_JSON = "tests/e2e/sample_host.json"


@pytest.fixture()
def storage(azurite: Azurite) -> Storage:
    return Storage(storage_settings({"AzureWebJobsStorage": azurite.connection_string}))


def entity(storage: Storage, table: str, partition: str, row: str) -> dict | None:
    try:
        return storage.table(table).get_entity(partition, row)
    except ResourceNotFoundError:
        return None


def test_http_to_queue_output_to_queue_trigger_to_table_row(start_host, storage) -> None:
    host = start_host(app=SAMPLE, host_json=SAMPLE_HOST_JSON)
    answer = requests.post(f"{host.ready['url']}/api/orders/A%2017?tag=x", json={"qty": 3}, timeout=10)

    assert answer.status_code == 202
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.json() == {"accepted": "A 17"}  # route parameters arrive URL-decoded
    row = wait_until(lambda: entity(storage, "SampleOrders", "orders", "A 17"), what="the order row")
    assert json.loads(row["body"]) == {"qty": 3}
    assert row["tag"] == "x"
    assert row["dequeue_count"] == 1


def test_a_message_that_always_fails_lands_in_poison_after_max_dequeue_count(start_host, storage) -> None:
    start_host(app=SAMPLE, host_json=SAMPLE_HOST_JSON)
    storage.send("sample-always-fails", "doomed-1")

    poison = storage.queue("sample-always-fails-poison")
    bodies = wait_until(
        lambda: [m.content for m in poison.peek_messages(max_messages=32)],
        what="a message in the poison queue",
    )
    assert bodies == [b"doomed-1"]
    attempts = sorted(
        int(e["RowKey"]) for e in storage.table("SampleAttempts").query_entities("PartitionKey eq 'doomed-1'")
    )
    assert attempts == [1, 2, 3]  # maxDequeueCount is 3 in sample_host.json, with the real dequeue counts
    assert storage.queue("sample-always-fails").peek_messages() == []


def test_admin_endpoint_runs_a_timer_now(start_host, storage) -> None:
    host = start_host(app=SAMPLE, host_json=SAMPLE_HOST_JSON)
    answer = requests.post(f"{host.ready['url']}/admin/functions/yearly", json={"input": ""}, timeout=10)

    assert answer.status_code == 202
    row = wait_until(lambda: entity(storage, "SampleTimer", "timer", "yearly"), what="the timer's row")
    assert row["past_due"] is False
    assert requests.post(f"{host.ready['url']}/admin/functions/nope", json={}, timeout=10).status_code == 404


def test_a_disabled_function_is_ignored_by_its_trigger_but_the_admin_endpoint_runs_it(
    start_host, storage
) -> None:
    switches = {f"AzureWebJobs.{name}.Disabled": "true" for name in ("accept_order", "store_order", "yearly")}
    host = start_host(app=SAMPLE, host_json=SAMPLE_HOST_JSON, **switches)
    base = host.ready["url"]

    assert requests.post(f"{base}/api/orders/d-1", json={}, timeout=10).status_code == 404  # as if absent
    assert requests.get(f"{base}/api/crash", timeout=10).status_code == 500  # the others still serve
    for name in ("accept_order", "store_order", "yearly"):
        assert any(f"Function {name}:" in line and "(disabled:" in line for line in host.output), name
    order = {"id": "d-2", "body": {"via": "admin"}, "tag": None}
    answer = requests.post(
        f"{base}/admin/functions/store_order", json={"input": json.dumps(order)}, timeout=10
    )
    assert answer.status_code == 202
    row = wait_until(lambda: entity(storage, "SampleOrders", "orders", "d-2"), what="the admin-run order")
    assert json.loads(row["body"]) == {"via": "admin"}


def test_unknown_routes_and_methods_get_the_hosts_404_and_a_crash_does_not_stop_the_host(start_host) -> None:
    host = start_host(app=SAMPLE, host_json=SAMPLE_HOST_JSON)
    base = host.ready["url"]

    assert requests.get(f"{base}/api/nothing-here", timeout=10).status_code == 404
    assert (
        requests.get(f"{base}/api/orders/1", timeout=10).status_code == 404
    )  # POST only, as the host answers
    assert requests.get(f"{base}/api/crash", timeout=10).status_code == 500
    assert requests.post(f"{base}/api/orders/2", json={}, timeout=10).status_code == 202
    assert host.wait_for_output("Executed 'crash' (Failed")
    line = next(line for line in host.output if "Executed 'crash' (Failed" in line)
    assert "[crash] [" in line  # function name and invocation id on every log line


def test_the_real_app_reports_healthy_storage(start_host) -> None:
    host = start_host()
    answer = requests.get(f"{host.ready['url']}/api/health", timeout=30)

    assert answer.status_code == 200
    assert answer.json() == {"status": "ok", "storage": {"tables": "ok", "queues": "ok"}}


def test_a_missing_setting_stops_the_host_at_start_with_its_name(azurite, test_secrets) -> None:
    env = {k: v for k, v in os.environ.items() if k not in test_secrets}
    env.update(
        test_secrets,
        AzureWebJobsStorage=azurite.connection_string,
        PUBLIC_BASE_URL="http://127.0.0.1:1",
        CRM_CALLBACK_URL="http://127.0.0.1:1/cb",
        CRM_RETURN_ORIGINS="http://127.0.0.1:1",
    )
    del env["CRM_SHARED_SECRET"]
    result = subprocess.run(
        [sys.executable, "-m", "local.host", "--port", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert "CRM_SHARED_SECRET" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_test_stack_keeps_every_timer_of_the_app_for_tests_to_run(stack) -> None:
    timers = [line for line in stack.host.output if "timerTrigger '" in line]
    assert timers and all("(disabled: AzureWebJobs." in line for line in timers), timers


def _rows(storage: Storage, partition: str) -> set[str]:
    try:
        return {e["RowKey"] for e in storage.table("SampleGated").query_entities(f"PartitionKey eq '{partition}'")}
    except ResourceNotFoundError:
        return set()


@pytest.mark.parametrize(
    ("settings", "quick_runs_while_held"),
    [
        ({}, False),  # the dev host's default: the next batch after the whole batch
        ({"AzureFunctionsJobHost__extensions__queues__newBatchThreshold": "2"}, True),  # as the platform
        (  # the worker's one thread is held: the message waits for it
            {
                "AzureFunctionsJobHost__extensions__queues__newBatchThreshold": "2",
                "PYTHON_THREADPOOL_THREAD_COUNT": "1",
            },
            False,
        ),
    ],
    ids=["whole-batch", "new-batch-threshold", "one-worker-thread"],
)
def test_a_message_arriving_while_another_runs_starts_as_the_dispatch_settings_say(
    start_host, storage, settings: dict[str, str], quick_runs_while_held: bool
) -> None:
    host = start_host(app=SAMPLE, host_json=SAMPLE_HOST_JSON, **settings)
    run = uuid.uuid4().hex[:8]  # the sample's table outlives each case
    hold, quick = f"hold-{run}", f"quick-{run}"
    storage.send("sample-gated", hold)
    wait_until(lambda: hold in _rows(storage, "started"), what="the held message running")
    storage.send("sample-gated", quick)
    if quick_runs_while_held:
        wait_until(lambda: quick in _rows(storage, "done"), what="the second message done meanwhile")
        assert hold not in _rows(storage, "done")
    elif "PYTHON_THREADPOOL_THREAD_COUNT" in settings:
        # Received (no longer visible), but the one thread is the held message's.
        wait_until(lambda: not storage.queue("sample-gated").peek_messages(), what="the second message received")
        assert quick not in _rows(storage, "started")
    else:
        # The poller waits for its batch; another trigger's poller goes on meanwhile.
        requests.post(f"{host.ready['url']}/api/orders/witness-{run}", json={}, timeout=10)
        wait_until(lambda: entity(storage, "SampleOrders", "orders", f"witness-{run}"), what="another trigger's work")
        assert quick not in _rows(storage, "started")
    storage.table("SampleGated").upsert_entity({"PartitionKey": "gate", "RowKey": hold})
    wait_until(lambda: {hold, quick} <= _rows(storage, "done"), what="both messages done")
