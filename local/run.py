"""``make run``: start the whole stack on this machine and keep it running until Ctrl-C.

Azurite (Tables, Queues), the Graph + identity emulator (unless real ``MS_CLIENT_ID`` settings are
given in the environment), the CRM console (``local/console``: the page to open, on port 7070; it
receives and verifies the service's callbacks) and the dev host on port 7071."""

from __future__ import annotations

import os
import signal
import sys
import threading
import webbrowser
from pathlib import Path

from local.azurite import Azurite, free_port
from local.dev_settings import ROOT, local_secrets, service_environment
from local.processes import Service

HOST_PORT = int(os.environ.get("PORT", "7071"))
CONSOLE_PORT = int(os.environ.get("CONSOLE_PORT", "7070"))


def main() -> None:
    stack: list = []
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    try:
        azurite = Azurite(ROOT / ".local" / "azurite")
        azurite.location.mkdir(parents=True, exist_ok=True)
        stack.append(azurite.start())
        secrets = local_secrets()
        identity = start_identity(secrets, stack)
        control_url = identity.pop("control_url", None)
        console = start_console(secrets, control_url, identity.get("ca_bundle"), stack)
        env = service_environment(
            storage_connection_string=azurite.connection_string,
            host_port=HOST_PORT,
            crm_callback_url=console.ready["callback_url"],
            secrets_=secrets,
            return_origins=f"{console.ready['origin']},http://localhost:{CONSOLE_PORT}",
            **identity,
        )
        host = Service("host", ["-m", "local.host", "--port", str(HOST_PORT)], env, log=sys.stdout)
        stack.append(host.start())
        print_next_steps(host.ready["url"], console.ready["url"], identity)
        open_browser(console.ready["url"])
        stopped.wait()
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        print("Stopping…", flush=True)
        for part in reversed(stack):
            part.stop()


def start_identity(secrets: dict[str, str], stack: list) -> dict[str, str | None]:
    """Real Microsoft identity when MS_CLIENT_ID is given; otherwise the local emulator."""
    if os.environ.get("MS_CLIENT_ID"):
        for name in ("MS_CLIENT_ID", "MS_CLIENT_SECRET"):
            secrets[name] = os.environ.get(name, "")
        return {}
    if not (ROOT / "local" / "emulator" / "__main__.py").exists():
        return {}
    emulator = Service("emulator", ["-m", "local.emulator", "--port", str(free_port())], {}, log=sys.stdout)
    stack.append(emulator.start())
    from local.emulator.control import EmulatorControl

    ready = emulator.ready
    control = EmulatorControl(ready["control_url"], ready["ca_path"])
    control.add_app(
        client_id=secrets["MS_CLIENT_ID"],
        client_secret=secrets["MS_CLIENT_SECRET"],
        redirect_uris=[
            f"http://127.0.0.1:{HOST_PORT}/api/auth/callback",
            f"http://localhost:{HOST_PORT}/api/auth/callback",
            f"http://127.0.0.1:{HOST_PORT}/api/auth/admin-callback",  # organisation mode (issue 19)
            f"http://localhost:{HOST_PORT}/api/auth/admin-callback",
        ],
        display_name="crm-outlook-sync (local)",
        application_permissions=["Calendars.ReadWrite", "MailboxSettings.Read", "User.ReadBasic.All"],
    )
    control.close()
    return {
        "authority_host": ready["authority_host"],
        "graph_api_base": ready["graph_base"],
        "ca_bundle": ready["ca_path"],
        "control_url": ready["control_url"],
    }


def start_console(
    secrets: dict[str, str], control_url: str | None, ca_path: str | None, stack: list
) -> Service:
    """The CRM stand-in page; with the emulator it creates the demo mailbox and shows its calendar."""
    args = ["-m", "local.console", "--port", str(CONSOLE_PORT), "--demo-activities"]
    args += ["--service-url", f"http://127.0.0.1:{HOST_PORT}"]
    if control_url and ca_path:
        args += ["--emulator-control", control_url, "--ca-path", ca_path]
    keys = {name: secrets[name] for name in ("CRM_SHARED_SECRET", "CRM_CALLBACK_SECRET")}
    console = Service("console", args, keys, log=sys.stdout)
    stack.append(console.start())
    return console


def print_next_steps(url: str, console_url: str, identity: dict[str, str | None]) -> None:
    where = "the local Graph emulator" if identity else "Microsoft (real MS_CLIENT_ID)"
    print(
        f"""
Open {console_url}  (the CRM console: sign in with Outlook, add activities, see the Outlook calendar)
crm-outlook-sync is running at {url}  (identity and Graph: {where})
  curl {url}/api/health
Secrets for signing CRM calls and verifying callbacks are in {Path(".local/secrets.json")} (CRM_SHARED_SECRET, CRM_CALLBACK_SECRET).
Ctrl-C stops everything this command started.
""",
        flush=True,
    )


def open_browser(url: str) -> None:
    """Only where a browser can show up; never fail for want of one."""
    if not (os.environ.get("DISPLAY") or os.environ.get("BROWSER")):
        return
    try:
        webbrowser.open(url)
    except Exception as error:  # noqa: BLE001 - a missing or broken browser must not stop the stack
        print(f"(could not open a browser: {error})", flush=True)


if __name__ == "__main__":
    main()
