"""``python -m local.host [--port 7071] [--app function_app:app]``: run the app until Ctrl-C."""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import signal
import sys
import threading
from datetime import UTC, datetime, timedelta
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
    shift_clock(os.environ.get("LOCAL_HOST_CLOCK_OFFSET_SECONDS"))
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
    # One write, newline included: print() writes the text and its newline apart, and a poller's
    # log line written in between left the ready line unreadable to whoever started the host.
    sys.stdout.write(json.dumps({"ready": True, "url": f"http://127.0.0.1:{host.port}"}) + "\n")
    sys.stdout.flush()
    stopped.wait()
    log.info("Stopping")
    host.stop()


def shift_clock(offset: str | None) -> None:
    """Tests only (tests/support/clock.py, TESTS_CLOCK): run the whole app that many seconds from
    now, as the test process does, so both read the same faked date. The wall clock only
    (``time.time``, ``datetime.now``); ``time.monotonic`` and sleeps stay real. Needs the dev
    dependency time-machine; never set outside tests."""
    if not offset:
        return
    import time_machine

    start = datetime.now(UTC) + timedelta(seconds=float(offset))
    time_machine.travel(start, tick=True).start()
    log.warning("Clock shifted by %s s for tests: it is now %s", offset, datetime.now(UTC).isoformat())


if __name__ == "__main__":
    main()
