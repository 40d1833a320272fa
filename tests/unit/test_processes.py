"""The ready line of a local process is read even when another thread's log line follows it on the
same line (seen in CI: the dev host's poller logged between the ready JSON and its newline)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from local.processes import Service


def test_the_ready_object_is_read_with_a_log_line_glued_after_it() -> None:
    service = Service("host", [], {})
    service.process = SimpleNamespace(  # type: ignore[assignment]
        stdout=iter([
            "2026-12-02 01:48:42,278 [host] [-] INFO host: Function health\n",
            '{"ready": true, "url": "http://127.0.0.1:36643"}2026-12-02 01:48:42,281 [host] WARNING pool\n',
            "2026-12-02 01:48:42,295 [host] WARNING pool\n",
        ])
    )
    got_ready = threading.Event()
    service._pump(got_ready)
    assert got_ready.is_set() and service.ready == {"ready": True, "url": "http://127.0.0.1:36643"}
    assert len(service.output) == 3  # every line kept for the tests that read the log
