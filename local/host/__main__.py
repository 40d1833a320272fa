"""``python -m local.host [--port 7071] [--app function_app:app]``: run the app until Ctrl-C."""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from local.host import DevHost, fail, load_app
from local.host.functions import configure_logging

log = logging.getLogger("host")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m local.host", description=__doc__)
    parser.add_argument("--port", type=int, default=7071, help="HTTP port (0 picks a free one)")
    parser.add_argument("--app", default="function_app:app", help="module:attribute of the FunctionApp")
    parser.add_argument("--host-json", type=Path, default=Path("host.json"))
    args = parser.parse_args()
    configure_logging()
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1` prints every thread's stack
    sys.path.insert(0, str(Path.cwd()))

    from shared.rules.settings import SettingsError

    try:
        app = load_app(args.app)
        host = DevHost(app, args.host_json, port=args.port)
    except SettingsError as error:
        fail(str(error))
    except OSError as error:
        fail(f"cannot listen on port {args.port}: {error.strerror}")

    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    host.start()
    # One machine-readable line for whoever started us (tests, make run), then human logs.
    print(json.dumps({"ready": True, "url": f"http://127.0.0.1:{host.port}"}), flush=True)
    stopped.wait()
    log.info("Stopping")
    host.stop()


if __name__ == "__main__":
    main()
