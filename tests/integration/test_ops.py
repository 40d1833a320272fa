"""``python -m ops`` (RUNBOOK.md) against real Azurite and the dev host, run as the operator runs it:
a poison message is inspected and replayed into a success, users are listed by state across
pages of the table, and held deletions are released through the signed contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from local.azurite import Azurite
from shared.rules import callback_messages, queues
from shared.rules.settings import storage_settings
from shared.store import tables
from shared.store.storage import Storage
from tests.conftest import wait_until
from tests.support.crm import CallbackReceiver

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def ops(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture()
def storage(azurite: Azurite) -> Storage:
    return Storage(storage_settings({"AzureWebJobsStorage": azurite.connection_string}))


def test_a_poison_callback_is_shown_and_replayed_into_a_delivery(
    azurite: Azurite, storage: Storage, start_host, test_secrets: dict[str, str], tmp_path: Path
) -> None:
    receiver = CallbackReceiver(test_secrets["CRM_CALLBACK_SECRET"])
    receiver.status = 503  # the CRM is down: the callback fails until the host gives up on it
    host_json = json.loads((ROOT / "host.json").read_text())
    host_json["extensions"]["queues"].update(maxDequeueCount=2, visibilityTimeout="00:00:00")
    (tmp_path / "host.json").write_text(json.dumps(host_json))
    for name in (queues.CRM_CALLBACKS, f"{queues.CRM_CALLBACKS}-poison"):
        storage.queue(name).clear_messages()
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    envelope = callback_messages.envelope(
        callback_messages.CONNECTED, tenant, "user-1", {"account": "a@b.example"}
    )
    try:
        start_host(host_json=str(tmp_path / "host.json"), CRM_CALLBACK_URL=receiver.url)
        storage.send(queues.CRM_CALLBACKS, json.dumps(envelope))
        poison = storage.queue(f"{queues.CRM_CALLBACKS}-poison")
        (poisoned,) = wait_until(lambda: list(poison.peek_messages()), 60, "the callback in the poison queue")
        env = {"AzureWebJobsStorage": azurite.connection_string}

        counted = ops("poison", "counts", **env)
        assert counted.returncode == 0, counted.stderr
        assert f"{queues.CRM_CALLBACKS}-poison\t1" in counted.stdout.splitlines()
        shown = ops("poison", "show", queues.CRM_CALLBACKS, "--json", **env)
        (item,) = [json.loads(line) for line in shown.stdout.splitlines()]
        assert item["id"] == poisoned.id and item["body"]["id"] == envelope["id"] and "tries" in item
        assert receiver.received == []

        receiver.status = 200  # the CRM is back
        replayed = ops("poison", "replay", f"{queues.CRM_CALLBACKS}-poison", "--id", poisoned.id, **env)
        assert replayed.returncode == 0, replayed.stderr
        assert f"replayed 1 message(s) to {queues.CRM_CALLBACKS}" in replayed.stdout

        delivered = wait_until(
            lambda: [c for c in receiver.received if c["id"] == envelope["id"]], 60, "the replayed callback"
        )
        assert delivered == [envelope] and receiver.rejected == 0  # delivered, signed, once
        wait_until(
            lambda: not list(storage.queue(queues.CRM_CALLBACKS).peek_messages()), 30, "an empty queue"
        )
        assert list(poison.peek_messages()) == []
        missing = ops("poison", "replay", queues.CRM_CALLBACKS, "--id", "no-such-message", **env)
        assert missing.returncode == 1 and "not found: no-such-message" in missing.stderr
    finally:
        receiver.close()


def test_users_are_listed_by_state_across_pages(azurite: Azurite, storage: Storage) -> None:
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    states = ["connected", "reauth_required", "disconnected"]
    rows = [
        {
            "PartitionKey": tables.key(tenant),
            "RowKey": tables.key(f"user/{n:04d}"),
            "tenant": tenant,
            "user": f"user/{n:04d}",
            "state": states[n % 3],
            "account_username": f"u{n}@contoso.example",
            "recent_errors": json.dumps(
                [{"at": "2027-01-01T00:00:00Z", "kind": "auth", "message": "AADSTS700082"}]
                if n % 3 == 1
                else []
            ),
        }
        for n in range(1200)  # more than two pages of 500
    ]
    table = storage.table(tables.CONNECTIONS)
    for start in range(0, len(rows), 100):
        table.submit_transaction([("upsert", row) for row in rows[start : start + 100]])
    storage.table(tables.MAILBOX_SYNC).upsert_entity(
        {
            "PartitionKey": tables.key(tenant, "user/0001"),
            "RowKey": "",
            "held_deletions": 25,
            "held_since": datetime.now(UTC),
        }
    )
    links = storage.table(tables.LINKS)
    for n in range(3):
        links.upsert_entity(
            {
                "PartitionKey": tables.key(tenant, "user/0002"),
                "RowKey": f"act-{n}",
                "activity_id": f"act-{n}",
                "version": 1,
                "state": "failed",
                "last_error": "ErrorInvalidRequest",
            }
        )
    env = {"AzureWebJobsStorage": azurite.connection_string}

    listed = ops("users", "reauth_required", **env)
    assert listed.returncode == 0, listed.stderr
    mine = [line.split("\t") for line in listed.stdout.splitlines() if line.startswith(tenant + "\t")]
    assert len(mine) == 400 and {m[2] for m in mine} == {"reauth_required"}
    assert mine[0][3].endswith("@contoso.example") and "auth: AADSTS700082" in mine[0][4]
    held = [line for line in ops("users", "held_deletions", **env).stdout.splitlines() if tenant in line]
    assert held and held[0].startswith(f"{tenant}\tuser/0001\theld_deletions\t25 held")
    failed = [line for line in ops("users", "failed_activities", **env).stdout.splitlines() if tenant in line]
    assert failed == [f"{tenant}\tuser/0002\tfailed_activities\t3 failed"]


def test_held_deletions_are_released_through_the_signed_contract(
    azurite: Azurite, storage: Storage, start_host, test_secrets: dict[str, str]
) -> None:
    host = start_host()
    storage.queue(queues.MAILBOX_RECONCILE).clear_messages()
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    env = {"SERVICE_URL": host.ready["url"], "CRM_SHARED_SECRET": test_secrets["CRM_SHARED_SECRET"]}

    released = ops("release-held", "--tenant", tenant, "--user", "user/1", **env)
    assert released.returncode == 0, released.stdout + released.stderr
    assert released.stdout.startswith("202 ") and '"confirm_deletions": true' in released.stdout
    forged = ops(
        "release-held", "--tenant", tenant, "--user", "user/1", **{**env, "CRM_SHARED_SECRET": "x" * 40}
    )
    assert forged.returncode == 1 and forged.stdout.startswith("401 ")
