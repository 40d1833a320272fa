"""The go-live check (``python -m tests.live``) in ``make test``: the same command a deployment team
runs, against make run's stack (dev host + Azurite + emulator). This file is the harness, not the
suite: it starts the stack, registers the test user and the public client in the emulator, and plays
the tester (the person who opens the device-code page and the authorization URL the suite prints,
over HTTP on the emulator's own pages). The suite itself only speaks HTTP: the signed CRM contract,
Graph v1.0 and the identity platform."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from local.azurite import free_port
from tests.conftest import ROOT
from tests.live.contract import CallbackReceiver, SignedCrm, user_path
from tests.live.suite import TAG
from tests.support.sign_in import approve_device_code, at_microsoft
from tests.support.stack import Stack, launch_stack

pytestmark = [pytest.mark.live, pytest.mark.e2e]
SUITE_FILES = ["__init__.py", "__main__.py", "contract.py", "outlook.py", "suite.py"]


@dataclass
class LocalLive:
    stack: Stack
    env: dict[str, str]
    upn: str
    oid: str
    port: int

    def run(self, *args: str, kill_when: Callable[[str], bool] | None = None,
            **extra: str) -> tuple[int, list[str]]:
        """``python -m tests.live <args>`` with the LIVE_* settings, playing the tester on its prompts."""
        ca = self.stack.emulator.ca_path
        proc = subprocess.Popen([sys.executable, "-m", "tests.live", *args], cwd=ROOT,
                                env={**self.env, **extra}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        lines: list[str] = []
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            lines.append(line)
            print(line)
            if line.startswith("SIGN-IN:"):
                found = re.search(r"open (\S+) and enter the code (\S+)", line)
                assert found, line
                page = approve_device_code(found[1], found[2], self.upn, ca)
                assert 'data-outcome="approved"' in page.text, page.text
            elif line.startswith("CONNECT:"):
                found = re.search(r"open (\S+) and sign in", line)
                assert found, line
                landed = at_microsoft(found[1], ca).deliver()
                assert landed.status_code == 200, landed.text  # no return_url: the "connected" page
            if kill_when is not None and kill_when(line):
                proc.kill()
                break
        code = proc.wait(timeout=300)
        return code, lines

    def settle(self) -> None:
        """The CRM keeps listening after the suite exits (a callback still on its way is delivered),
        then the barrier: nothing left to run in the host, nothing left to send in Graph."""
        receiver = CallbackReceiver(f"127.0.0.1:{self.port}", [self.env["LIVE_CRM_CALLBACK_SECRET"]])
        try:
            self.stack.wait_until_idle()
        finally:
            receiver.close()

    def mailbox(self) -> list[dict[str, Any]]:
        return self.stack.control.events(self.oid)

    def status(self) -> dict[str, Any]:
        crm = SignedCrm(self.stack.url, self.env["LIVE_CRM_SHARED_SECRET"])
        return dict(crm.call("GET", user_path("live-check", f"live-check:{self.upn}", "status")).json())

    def foreign_event(self, n: int) -> dict[str, Any]:
        """A salesperson's own meeting, made in Outlook (the emulator's "as the user")."""
        return self.stack.control.user_create_event(self.oid, {
            "subject": f"Cliente {n}", "start": {"dateTime": f"2030-02-0{n}T09:00:00", "timeZone": "UTC"},
            "end": {"dateTime": f"2030-02-0{n}T10:00:00", "timeZone": "UTC"}})


@pytest.fixture
def live(emulator: Any, azurite: Any, test_secrets: dict[str, str], tmp_path: Path) -> Iterator[LocalLive]:
    port = free_port()
    stack = launch_stack(azurite, emulator, test_secrets, CRM_CALLBACK_URL=f"http://127.0.0.1:{port}/crm/callbacks")
    public = stack.control.add_app(display_name="Go-live check (public client)", public_client=True)
    upn = f"vendedora-{uuid.uuid4().hex[:8]}@contoso.example"
    # The mailbox is in Madrid, the CRM in Bogotá: the exact-time check means something.
    user = stack.control.add_user(upn, display_name="Vendedora de prueba", time_zone="Romance Standard Time",
                                  locale="es-ES")
    stack.control.update_settings(device_code_interval=1)  # Entra says 5 s; the suite honours any
    env = {
        **os.environ,
        "LIVE_SERVICE_URL": stack.url,
        "LIVE_CRM_SHARED_SECRET": test_secrets["CRM_SHARED_SECRET"],
        "LIVE_CRM_CALLBACK_SECRET": test_secrets["CRM_CALLBACK_SECRET"],
        "LIVE_CLIENT_ID": public["client_id"],
        "LIVE_TEST_USER": upn,
        "LIVE_AUTHORITY_HOST": emulator.authority_host,
        "LIVE_GRAPH_BASE": emulator.graph_base,
        "LIVE_CALLBACK_LISTEN": f"127.0.0.1:{port}",
        "LIVE_STATE_DIR": str(tmp_path / "live"),
        "LIVE_TIMEOUT": "60",
        "REQUESTS_CA_BUNDLE": emulator.ca_path,
    }
    env.pop("LIVE_I_UNDERSTAND", None)
    running = LocalLive(stack, env, upn, user["id"], port)
    yield running
    stack.close()
    print("--- host output (shown by pytest when the test fails) ---")
    print("".join(stack.host.output[-300:]))
    assert stack.callbacks.rejected == 0


def test_the_suite_passes_against_the_local_stack(live: LocalLive) -> None:
    code, lines = live.run()
    checks = [line for line in lines if line.split(" ", 1)[0] in ("PASS", "FAIL", "NOT")]
    assert code == 0, "\n".join(lines)
    assert all(line.startswith("PASS") for line in checks), "\n".join(checks)
    names = " | ".join(checks)
    for name in ("sign-in", "guard", "connect", "exact time", "callbacks", "update", "unchanged re-push",
                 "cancel", "sync: 50", "move in Outlook", "deletion in Outlook", "no echo", "remove sync"):
        assert f" {name}" in names, f"no check {name!r} in:\n{names}"
    assert "10:00 America/Bogota is" in names and "Romance Standard Time" in names
    assert lines[-1].startswith("SUMMARY      13 passed, 0 failed, 0 not checked")
    live.settle()
    assert live.mailbox() == []  # the run left nothing behind
    assert live.status()["state"] == "disconnected"
    # A second run signs in from the encrypted token cache: no device-code prompt.
    code, again = live.run("guard")
    assert code == 0 and not any(line.startswith("SIGN-IN:") for line in again), "\n".join(again)


def test_the_suite_refuses_a_calendar_with_foreign_events(live: LocalLive) -> None:
    foreign = [live.foreign_event(n)["id"] for n in range(1, 5)]  # four: more than "a few" (3)
    code, lines = live.run()
    assert code == 2, "\n".join(lines)
    assert any(line.startswith("REFUSED") and "LIVE_I_UNDERSTAND=1" in line for line in lines), "\n".join(lines)
    assert not any(line.startswith("CONNECT:") for line in lines)
    live.settle()
    assert sorted(e["id"] for e in live.mailbox()) == sorted(foreign)  # nothing created, nothing touched
    assert live.status()["state"] == "never_connected"
    # The tester who means it: the guard lets the run through.
    code, lines = live.run("guard", LIVE_I_UNDERSTAND="1")
    assert code == 0 and any(line.startswith("PASS         guard") for line in lines), "\n".join(lines)


def test_the_postdeploy_hook_checks_health_and_settings_and_prints_the_live_command(live: LocalLive) -> None:
    hook = [sys.executable, "infra/hooks/postdeploy.py"]
    ok = subprocess.run(hook, cwd=ROOT, env={**os.environ, "PUBLIC_BASE_URL": live.stack.url},
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"LIVE_SERVICE_URL={live.stack.url}" in ok.stdout and "make test-live" in ok.stdout
    live.stack.host.stop()  # nothing answers: the hook fails the deployment
    down = subprocess.run(hook, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PUBLIC_BASE_URL": live.stack.url, "POSTDEPLOY_WAIT_SECONDS": "0"})
    assert down.returncode == 1 and "FAILED" in down.stdout, down.stdout


def test_clean_removes_what_a_killed_run_left(live: LocalLive) -> None:
    mine = live.foreign_event(1)
    code, lines = live.run(kill_when=lambda line: line.startswith("PASS         sync:"))
    assert code != 0 and lines[-1].startswith("PASS         sync:"), "\n".join(lines)
    live.settle()
    left = [e for e in live.mailbox() if e["subject"].startswith(TAG)]
    assert len(left) >= 50, "the killed run should have left its events behind"
    assert live.status()["state"] == "connected"

    code, lines = live.run("clean")
    assert code == 0, "\n".join(lines)
    live.settle()
    assert [e["id"] for e in live.mailbox()] == [mine["id"]]  # only the salesperson's own event stays
    assert live.status()["state"] == "disconnected"


def test_the_suite_speaks_only_http() -> None:
    """No import of the service's code, the local platform or the test support: only the contract."""
    forbidden = ("shared", "functions", "local", "tests.support", "tests.conftest", "function_app")
    for name in SUITE_FILES:
        tree = ast.parse((Path(__file__).parent / name).read_text())
        for node in ast.walk(tree):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for module in modules:
                assert not module.startswith(forbidden), f"{name} imports {module}"
