"""The whole service on this machine, for e2e tests and benchmarks alike: the dev host as its own
process, Azurite, the emulator, and a CRM stand-in (signed client + callback receiver)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import requests

from local.azurite import Azurite, free_port
from local.dev_settings import service_environment
from local.processes import Service
from shared.rules import queues
from shared.rules.settings import storage_settings, work_queue_shards
from shared.store.storage import Storage
from tests.support.clock import host_clock_env
from tests.support.crm import CallbackReceiver, SignedClient

RETURN_ORIGIN = "https://crm.example.com"
# Timers fire only when a test runs them (POST /admin/functions/{name}): a schedule that happens to
# come due in the middle of a test would add Graph calls and callbacks nobody asked for.
TIMERS_OFF = {
    f"AzureWebJobs.{name}.Disabled": "true"
    for name in ("token_health", "renew_subscriptions", "reconcile_sweep", "clean_up")
}

# A timer spreads its fan-out messages over FANOUT_SPREAD_SECONDS (300 s in production); a test
# waits for the workers, so its stack spreads them over 1 s.
FAST_FANOUT = {"FANOUT_SPREAD_SECONDS": "1"}


@dataclass
class Stack:
    host: Service
    crm: SignedClient
    callbacks: CallbackReceiver
    emulator: Any
    storage: Storage
    secrets: dict[str, str]
    shards: int = 1  # WORK_QUEUE_SHARDS of the host (shared/rules/queues.py)

    @property
    def url(self) -> str:
        return self.host.ready["url"]

    @property
    def control(self) -> Any:
        return self.emulator.control

    def wait_until_idle(self, timeout: float = 60.0) -> dict[str, Any]:
        """See ``wait_until_idle`` below: the barrier before asserting that something did not happen."""
        return wait_until_idle(self.url, self.emulator, timeout)

    def queue_name(self, base: str, tenant: str) -> str:
        """The tenant's shard of the work queue ``base``, as the host routes it."""
        return queues.tenant_queue(base, tenant, self.shards)

    def depth(self, base: str) -> int:
        """Messages (visible, held or delayed) in every shard of the work queue ``base``."""
        return sum(
            self.storage.queue(name).get_queue_properties().approximate_message_count
            for name in queues.all_queues(self.shards, (base,))
        )

    def poisoned(self, base: str) -> list[bytes]:
        """What the host moved to the ``-poison`` queues of every shard of ``base``."""
        return [
            m.content
            for name in queues.all_queues(self.shards, (base,))
            for m in self.storage.queue(f"{name}-poison").peek_messages(max_messages=32)
        ]

    def close(self) -> None:
        self.host.stop()  # first: a callback in flight to a closed receiver would hang until its timeout
        self.callbacks.close()


def launch_stack(azurite: Azurite, emulator: Any, secrets: dict[str, str], **env: str) -> Stack:
    """Register our app in a freshly reset emulator and start the dev host against it."""
    emulator.control.reset()
    port = free_port()
    emulator.control.add_app(
        client_id=secrets["MS_CLIENT_ID"],
        client_secret=secrets["MS_CLIENT_SECRET"],
        redirect_uris=[f"http://127.0.0.1:{port}/api/auth/callback", f"http://127.0.0.1:{port}/api/auth/admin-callback"],
        display_name="crm-outlook-sync (tests)",
        # Organisation mode (issue 19, infra/README.md): what an admin consent grants the app.
        application_permissions=["Calendars.ReadWrite", "MailboxSettings.Read", "User.ReadBasic.All"],
    )
    receiver = CallbackReceiver(secrets["CRM_CALLBACK_SECRET"])
    settings = service_environment(
        storage_connection_string=azurite.connection_string,
        host_port=port,
        crm_callback_url=receiver.url,
        secrets_=secrets,
        authority_host=emulator.authority_host,
        graph_api_base=emulator.graph_base,
        ca_bundle=emulator.ca_path,
        return_origins=RETURN_ORIGIN,
    )
    settings.update({**TIMERS_OFF, **FAST_FANOUT, **host_clock_env(), **env})
    storage = Storage(storage_settings({"AzureWebJobsStorage": azurite.connection_string}))
    shards = work_queue_shards(settings)
    empty_queues(storage, shards)
    host = Service("host", ["-m", "local.host", "--port", str(port)], settings).start()
    return Stack(
        host,
        SignedClient(host.ready["url"], secrets["CRM_SHARED_SECRET"]),
        receiver,
        emulator,
        storage,
        secrets,
        shards,
    )


def empty_queues(storage: Storage, shards: int) -> None:
    """Azurite lives for the whole test session; a message an earlier test's host left behind (a
    callback not yet delivered, say) must not be handled by this host and reach this receiver."""
    for name in queues.all_queues(shards):
        for queue in (name, f"{name}-poison"):
            storage.queue(queue).clear_messages()  # invisible (in-flight) messages go too


def host_idle(host_url: str) -> dict[str, Any]:
    """The dev host's idle report (``GET /admin/host/idle``, local/host/__init__.py)."""
    answer = requests.get(f"{host_url}/admin/host/idle", timeout=10)
    answer.raise_for_status()
    return answer.json()


def graph_quiet(emulator: Any) -> bool:
    """No change or lifecycle notification waits in the (in-process) emulator, a retry due later
    included, unless the test paused notifications: then they are held on purpose."""
    notifier = emulator.notifier
    with notifier.cond:
        return bool(notifier.store.settings.notifications_paused) or not notifier.pending


def wait_until_idle(host_url: str, emulator: Any, timeout: float = 60.0) -> dict[str, Any]:
    """The barrier before asserting that something did *not* happen ("no callback", "only",
    "once"): the host has no message left in any queue it polls (delayed ones included: they are
    work still due) and nothing running, and Graph has no notification left to send it, with no
    work begun between the host's two readings (so a notification delivered while Graph was being
    read is not missed). Polls every 50 ms; never waits a fixed time."""
    deadline = time.monotonic() + timeout
    while True:
        first = host_idle(host_url)
        if first["idle"] and graph_quiet(emulator):
            second = host_idle(host_url)
            if second["idle"] and second["started"] == first["started"]:
                return second
        if time.monotonic() > deadline:
            raise AssertionError(f"the host was not idle after {timeout:.0f} s: {first}")
        time.sleep(0.05)
