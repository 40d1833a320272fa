"""`python -m local.emulator [--port 0] [--state-dir DIR] [--client-id ID --client-secret S --redirect-uri U]
[--user UPN [--time-zone TZ]] [--admin UPN]`: serve until interrupted; print one JSON line once ready."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading

from .server import start_emulator


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m local.emulator", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    p.add_argument("--state-dir", default=None, help="where to write the CA bundle (default: a temp dir)")
    p.add_argument("--client-id", help="register an app with this client id at start")
    p.add_argument("--client-secret", help="its secret")
    p.add_argument("--redirect-uri", action="append", default=[], help="its redirect URI (repeatable)")
    p.add_argument("--user", action="append", default=[], help="register a user (UPN) at start (repeatable)")
    p.add_argument("--time-zone", default="UTC", help="mailbox time zone for --user (Windows or IANA name)")
    p.add_argument("--admin", action="append", default=[],
                   help="register a tenant administrator (UPN; may grant admin consent) at start (repeatable)")
    p.add_argument("--tenant-id", default=None, help="tenant of --user and --admin")
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)

    emu = start_emulator(port=args.port, host=args.host, state_dir=args.state_dir)
    info = emu.describe()
    if args.client_id:
        info["app"] = emu.control.add_app(client_id=args.client_id, client_secret=args.client_secret,
                                          redirect_uris=args.redirect_uri)
    users = [emu.control.add_user(upn, time_zone=args.time_zone, tenant_id=args.tenant_id) for upn in args.user]
    users += [emu.control.add_user(upn, time_zone=args.time_zone, tenant_id=args.tenant_id, is_admin=True)
              for upn in args.admin]
    if users:
        info["users"] = users
    print(json.dumps(info), flush=True)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
