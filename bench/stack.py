"""A running stack for benchmarks: Azurite, the emulator and the dev host (tests/support/stack.py),
started and stopped by a context manager so each bench is a plain script."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from local.azurite import Azurite
from local.dev_settings import new_secrets
from local.host import read_host_json
from tests.support.stack import Stack, launch_stack

ROOT = Path(__file__).resolve().parent.parent


def platform_dispatch(threads: int | None = None) -> dict[str, str]:
    """Dev host settings that dispatch queue messages as Flex Consumption does: the Python worker's
    one thread pool (``PYTHON_THREADPOOL_THREAD_COUNT``; unset on the platform, Python's default
    ``min(32, cores + 4)``) shared by every trigger, the triggers taking turns in it as they would on
    instances of their own, and the next batch received once ``newBatchThreshold`` (the platform's
    default on one vCPU, ``batchSize / 2``, host.json's or a ``batchSize`` app setting's in this
    environment) or fewer messages are still running."""
    _, options = read_host_json(ROOT / "host.json")
    return {
        "PYTHON_THREADPOOL_THREAD_COUNT": str(threads or min(32, (os.cpu_count() or 1) + 4)),
        "AzureFunctionsJobHost__extensions__queues__newBatchThreshold": str(max(1, options.batch_size // 2)),
    }


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


def planned_activities(
    owner: str, count: int, *, prefix: str, zones: Sequence[str] = ("America/Bogota",)
) -> list[dict[str, Any]]:
    """``count`` planned half-hour meetings on the coming days, as the CRM would send them: wall
    clock in each activity's zone (the zones taken in turn), ids ``<prefix>-00000`` on."""
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0, tzinfo=None)
    items = []
    for n in range(count):
        start = now + timedelta(days=1 + n % 300, hours=n % 11)
        activity_id = f"{prefix}-{n:05d}"
        items.append(
            {
                "id": activity_id,
                "version": 1,
                "owner_user_id": owner,
                "type": {"id": "meeting", "name": "Reunión", "show_in_calendar": True},
                "status": "planned",
                "subject": f"Reunión {n}",
                "description": "Revisar la propuesta.",
                "start": start.isoformat(),
                "end": (start + timedelta(minutes=30)).isoformat(),
                "time_zone": zones[n % len(zones)],
                "all_day": False,
                "url": f"https://crm.example.com/activities/{activity_id}",
            }
        )
    return items
