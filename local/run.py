"""``make run``: start the whole stack on this machine and keep it running until Ctrl-C.

Azurite (Tables, Queues), the Graph + identity emulator (unless real ``MS_CLIENT_ID`` settings are
given in the environment), a CRM stand-in that prints callbacks, and the dev host on port 7071."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from local.azurite import Azurite, free_port
from local.dev_settings import ROOT, local_secrets, service_environment
from local.processes import Service

HOST_PORT = int(os.environ.get("PORT", "7071"))


def main() -> None:
    stack: list = []
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    try:
        azurite = Azurite(ROOT / ".local" / "azurite")
        azurite.location.mkdir(parents=True, exist_ok=True)
        stack.append(azurite.start())
        crm = Service("crm", ["-m", "local.crm_stub"], {}, log=sys.stdout).start()
        stack.append(crm)
        secrets = local_secrets()
        identity = start_identity(secrets, stack)
        env = service_environment(
            storage_connection_string=azurite.connection_string,
            host_port=HOST_PORT,
            crm_callback_url=crm.ready["url"],
            secrets_=secrets,
            **identity,
        )
        host = Service("host", ["-m", "local.host", "--port", str(HOST_PORT)], env, log=sys.stdout)
        stack.append(host.start())
        print_next_steps(host.ready["url"], identity)
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
    from local.emulator.control import register_local_app

    return register_local_app(
        emulator.ready, secrets, redirect_uri=f"http://127.0.0.1:{HOST_PORT}/api/auth/callback"
    )


def print_next_steps(url: str, identity: dict[str, str | None]) -> None:
    where = "the local Graph emulator" if identity else "Microsoft (real MS_CLIENT_ID)"
    print(
        f"""
crm-outlook-sync is running at {url}  (identity and Graph: {where})
  curl {url}/api/health
Secrets for signing CRM calls are in {Path(".local/secrets.json")} (CRM_SHARED_SECRET).
Ctrl-C stops everything this command started.
""",
        flush=True,
    )


if __name__ == "__main__":
    main()
