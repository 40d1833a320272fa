"""Timer triggers on their NCRONTAB schedules (six fields, seconds first, UTC), as the host runs
them: one invocation at a time per function; a failed run is not retried."""

from __future__ import annotations

import contextlib
import logging
import threading
from datetime import UTC, datetime

from azure.functions.timer import TimerRequest
from croniter import croniter

from local.host.functions import BUSY, FunctionSpec, invoke

log = logging.getLogger("host")


def next_occurrence(schedule: str, after: datetime) -> datetime:
    """The next time a six-field NCRONTAB schedule fires strictly after ``after``."""
    if len(schedule.split()) != 6:
        raise ValueError(f"NCRONTAB schedule {schedule!r} must have six fields, seconds first")
    return croniter(schedule, after, second_at_beginning=True).get_next(datetime)


class TimerRunner(threading.Thread):
    def __init__(self, spec: FunctionSpec, stopping: threading.Event) -> None:
        super().__init__(name=f"timer:{spec.name}", daemon=True)
        self.spec = spec
        self.stopping = stopping
        self.schedule = spec.trigger["schedule"]
        self.running = threading.Lock()  # the host never overlaps two runs of one timer
        next_occurrence(self.schedule, datetime.now(UTC))  # a bad schedule fails at start

    def run(self) -> None:
        if self.spec.trigger.get("runOnStartup"):
            self.fire()
        while not self.stopping.is_set():
            due = next_occurrence(self.schedule, datetime.now(UTC))
            if self.stopping.wait(max(0.0, (due - datetime.now(UTC)).total_seconds())):
                return
            self.fire()

    def fire(self, past_due: bool = False) -> None:
        if not self.running.acquire(blocking=False):
            log.info("Timer '%s' is still running; this occurrence is skipped", self.spec.name)
            return
        try:
            with BUSY.working(), contextlib.suppress(Exception):  # logged by invoke; not retried
                invoke(self.spec, TimerRequest(past_due=past_due))
        finally:
            self.running.release()
