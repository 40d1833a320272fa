"""A running stack for benchmarks: Azurite, the emulator and the dev host (tests/support/stack.py),
started and stopped by a context manager so each bench is a plain script."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from local.azurite import Azurite
from local.dev_settings import new_secrets
from tests.support.stack import Stack, launch_stack


@contextmanager
def running_stack(**env: str) -> Iterator[Stack]:
    from local.emulator import start_emulator

    with (
        tempfile.TemporaryDirectory(prefix="bench-") as folder,
        Azurite(Path(folder)) as azurite,
        start_emulator() as emulator,
    ):
        previous = os.environ.get("REQUESTS_CA_BUNDLE")
        os.environ["REQUESTS_CA_BUNDLE"] = emulator.ca_path
        stack = launch_stack(azurite, emulator, new_secrets(), **env)
        try:
            yield stack
        finally:
            stack.close()
            if previous is None:
                os.environ.pop("REQUESTS_CA_BUNDLE", None)
            else:
                os.environ["REQUESTS_CA_BUNDLE"] = previous


def graph_requests(stack: Stack, mailbox: str, prefix: str = "") -> int:
    """HTTP requests the emulator's Graph counted for one mailbox (endpoints like ``POST /events``),
    optionally only those whose endpoint contains ``prefix``."""
    counted = stack.control.counters(mailbox)["mailboxes"].get(mailbox, {}).get("requests", {})
    return sum(n for endpoint, n in counted.items() if prefix in endpoint)
