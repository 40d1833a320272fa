"""Fixtures shared by every test layer: Azurite, the dev host, local settings, and a way to wait
for something to become true without sleeping a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from local.azurite import Azurite, free_port
from local.dev_settings import new_secrets, service_environment
from local.processes import Service
from tests.support.stack import Stack, launch_stack

__all__ = ["ROOT", "Stack", "wait_until"]

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


def wait_until(probe: Callable[[], T], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    with Azurite(tmp_path_factory.mktemp("azurite")) as running:
        yield running


@pytest.fixture(scope="session")
def test_secrets() -> dict[str, str]:
    return new_secrets()


@pytest.fixture()
def start_host(azurite: Azurite, test_secrets: dict[str, str]) -> Iterator[Callable[..., Service]]:
    """Start ``python -m local.host`` as its own process; stopped when the test ends."""
    started: list[Service] = []

    def start(
        app: str = "function_app:app", host_json: str = "host.json", port: int = 0, **env: str
    ) -> Service:
        port = port or free_port()
        settings = service_environment(
            storage_connection_string=azurite.connection_string,
            host_port=port,
            crm_callback_url="http://127.0.0.1:9/unused",
            secrets_=test_secrets,
        )
        settings.update(env)
        service = Service(
            "host",
            ["-m", "local.host", "--port", str(port), "--app", app, "--host-json", host_json],
            settings,
        )
        started.append(service)
        return service.start()

    yield start
    for service in started:
        service.stop()
        print(f"--- {service.name} output (shown by pytest when the test fails) ---")
        print("".join(service.output[-300:]))


@pytest.fixture(scope="session")
def emulator() -> Iterator[Any]:
    """The Graph + identity emulator, in-process, trusted by this process's requests and MSAL."""
    from local.emulator import start_emulator

    with start_emulator() as running, pytest.MonkeyPatch.context() as patch:
        # requests lets these override Session.verify (MSAL's `verify=` included): trust the emulator's CA.
        patch.setenv("REQUESTS_CA_BUNDLE", running.ca_path)
        patch.setenv("CURL_CA_BUNDLE", running.ca_path)
        yield running


@pytest.fixture()
def stack(emulator: Any, azurite: Azurite, test_secrets: dict[str, str]) -> Iterator[Stack]:
    """The whole stack (tests/support/stack.py); the host's log is printed when a test fails.
    Every callback the service sent must have verified: a badly signed one fails the test."""
    running = launch_stack(azurite, emulator, test_secrets)
    yield running
    running.close()
    print("--- host output (shown by pytest when the test fails) ---")
    print("".join(running.host.output[-300:]))
    assert running.callbacks.rejected == 0, (
        f"{running.callbacks.rejected} callback(s) reached the CRM with a bad signature"
    )
