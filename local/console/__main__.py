"""``python -m local.console``: the CRM stand-in page (local only; see README.md beside this file).

Reads ``CRM_SHARED_SECRET`` (signs its calls) and ``CRM_CALLBACK_SECRET`` (verifies callbacks)
from the environment. Prints one JSON line once it listens:
``{"ready": true, "url": ..., "callback_url": ..., "origin": ...}``; serves until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from datetime import date
from secrets import token_hex

from local.console.server import Config, Console, serve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m local.console", description=__doc__)
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--service-url", required=True, help="the service (dev host), e.g. http://127.0.0.1:7071")
    p.add_argument(
        "--tenant",
        help="the CRM's tenant id (default: a new one per start, as the CRM's data and the emulator's mailbox "
        "live in memory: a connection stored by an earlier run must not be mistaken for this one)",
    )
    p.add_argument("--user", default="ana", help="the CRM's user id")
    p.add_argument("--user-name", default="Ana Pérez")
    p.add_argument(
        "--upn", default="ana@contoso.example", help="Microsoft account: login hint and mailbox shown"
    )
    p.add_argument("--crm-time-zone", default="America/Bogota", help="the CRM user's IANA time zone")
    p.add_argument(
        "--mailbox-time-zone",
        default="Romance Standard Time",
        help="the emulated mailbox's zone, when the console creates the mailbox",
    )
    p.add_argument("--emulator-control", help="the Graph emulator's control URL (no Outlook view without it)")
    p.add_argument("--ca-path", help="the emulator's CA (PEM)")
    p.add_argument("--demo-activities", action="store_true", help="start with a few activities in the CRM")
    args = p.parse_args(argv)

    secrets = [s.strip() for s in os.environ.get("CRM_SHARED_SECRET", "").split(",") if s.strip()]
    callback_secrets = [s.strip() for s in os.environ.get("CRM_CALLBACK_SECRET", "").split(",") if s.strip()]
    if not secrets or not callback_secrets:
        print(
            "error: CRM_SHARED_SECRET and CRM_CALLBACK_SECRET must be set (the console signs the CRM's "
            "calls with the first and verifies the service's callbacks with the second)",
            file=sys.stderr,
        )
        return 2
    config = Config(
        service_url=args.service_url.rstrip("/"),
        secrets=secrets,
        callback_secrets=callback_secrets,
        tenant=args.tenant or f"demo-crm-{token_hex(3)}",
        user=args.user,
        user_name=args.user_name,
        upn=args.upn,
        crm_time_zone=args.crm_time_zone,
        mailbox_time_zone=args.mailbox_time_zone,
        control_url=args.emulator_control,
        ca_path=args.ca_path,
    )
    console = Console(config, log=sys.stdout)
    server = serve(console, port=args.port)
    console.prepare_emulator()
    if args.demo_activities:
        console.seed_demo_activities(date.today())
    url = config.public_url
    print(
        json.dumps({"ready": True, "url": f"{url}/", "origin": url, "callback_url": f"{url}/crm/callbacks"}),
        flush=True,
    )

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stop.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
