"""A dev host that runs ``function_app.py`` as the Azure Functions host would, with no Core Tools:
HTTP triggers, queue triggers and output bindings against Storage (Azurite), timers, and the admin
endpoint. Everything comes from the app's own registrations and ``host.json``.

A function whose app setting ``AzureWebJobs.<name>.Disabled`` is ``true`` is ignored by its
trigger, as the Functions host does (disable-function.md): its route answers 404, its queue is not
polled, its timer does not fire; the admin endpoint still runs it. The tests' stacks use this to
keep the timers to themselves and run them when a test asks.

``GET /admin/host/idle`` (local only, like the admin endpoint) answers whether the host is idle:
every queue it polls is empty and nothing runs (see ``DevHost.idle``). Tests use it as a barrier
before asserting that something did *not* happen."""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any

from werkzeug.serving import make_server

from local.host.functions import BUSY, FunctionSpec, index, invoke
from local.host.http import WsgiApp, build_routes
from local.host.queues import QueueOptions, QueuePoller, send_outputs, taking_turns
from local.host.timers import TimerRunner

log = logging.getLogger("host")


def load_app(target: str) -> Any:
    """``module:attribute``, e.g. ``function_app:app``."""
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute or "app")


def read_host_json(path: Path, environ: Any = None) -> tuple[str, QueueOptions]:
    config = json.loads(path.read_text()) if path.exists() else {}
    apply_overrides(config, os.environ if environ is None else environ)
    extensions = config.get("extensions", {})
    prefix = extensions.get("http", {}).get("routePrefix", "api")
    queues = extensions.get("queues", {})
    defaults = QueueOptions()
    options = QueueOptions(
        batch_size=int(queues.get("batchSize", defaults.batch_size)),
        max_dequeue_count=int(queues.get("maxDequeueCount", defaults.max_dequeue_count)),
        visibility_timeout=_timespan(queues.get("visibilityTimeout"), defaults.visibility_timeout),
        max_polling_interval=_timespan(queues.get("maxPollingInterval"), defaults.max_polling_interval),
        new_batch_threshold=(
            None if queues.get("newBatchThreshold") is None else int(queues["newBatchThreshold"])
        ),
    )
    return prefix, options


HOST_OVERRIDE = "AzureFunctionsJobHost__"


def apply_overrides(config: dict[str, Any], environ: Any) -> None:
    """App settings override host.json as in Azure: ``AzureFunctionsJobHost__extensions__queues__batchSize=8``
    sets ``extensions.queues.batchSize`` (names matched case-insensitively)."""
    for name, value in environ.items():
        if not name.startswith(HOST_OVERRIDE):
            continue
        node = config
        *parents, leaf = name[len(HOST_OVERRIDE) :].split("__")
        for part in parents:
            key = next((k for k in node if k.lower() == part.lower()), part)
            node = node.setdefault(key, {})
        node[next((k for k in node if k.lower() == leaf.lower()), leaf)] = value


def _timespan(value: str | None, default: float) -> float:
    """host.json TimeSpans: ``hh:mm:ss[.fff]`` (or milliseconds as a number)."""
    if value is None:
        return default
    if isinstance(value, int | float):
        return value / 1000
    found = re.fullmatch(r"(\d+):(\d{2}):(\d{2}(?:\.\d+)?)", value)
    if not found:
        raise ValueError(f"host.json: {value!r} is not a TimeSpan like 00:00:30")
    hours, minutes, seconds = found.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


class DevHost:
    def __init__(self, app: Any, host_json: Path, *, port: int = 7071, bind: str = "127.0.0.1") -> None:
        self.specs = index(app)
        prefix, self.queue_options = read_host_json(host_json)
        self.by_name = {spec.name.lower(): spec for spec in self.specs}
        self.disabled = {spec.name for spec in self.specs if is_disabled(spec.name, os.environ)}
        enabled = [spec for spec in self.specs if spec.name not in self.disabled]
        self.stopping = threading.Event()
        self.timers = [TimerRunner(s, self.stopping) for s in self.specs if s.trigger_type == "timerTrigger"]
        turns = taking_turns(os.environ)
        self.pollers = [
            QueuePoller(s, self.queue_options, self.stopping, turns)
            for s in enabled
            if s.trigger_type == "queueTrigger"
        ]
        self.server = make_server(
            bind, port, WsgiApp(build_routes(enabled, prefix), self.run_now, self.idle), threaded=True
        )
        self.port = self.server.server_port
        self.prefix = prefix

    def start(self) -> None:
        for thread in [*self.running_timers, *self.pollers]:
            thread.start()
        threading.Thread(target=self.server.serve_forever, name="http", daemon=True).start()
        for spec in self.specs:
            disabled = f" (disabled: AzureWebJobs.{spec.name}.Disabled)" if spec.name in self.disabled else ""
            log.info("Function %s: %s%s", spec.name, describe(spec, self.prefix, self.port), disabled)

    @property
    def running_timers(self) -> list[TimerRunner]:
        return [t for t in self.timers if t.spec.name not in self.disabled]

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        for thread in [*self.running_timers, *self.pollers]:
            thread.join(timeout=30)

    def idle(self) -> dict[str, Any]:
        """Idle: every queue this host polls is empty and no work is under way, read between two
        equal snapshots of the work counter (nothing began or ended while the queues were read).

        A queue's count includes messages held invisible by a running invocation and delayed ones
        (sent with a visibility timeout, or put back after a failure or a ``Retry-After``): a
        message due later is work still to do, so the host is not idle until it has been handled.
        Poison queues are not polled and not counted."""
        before = BUSY.snapshot()
        queues = {poller.queue_name: poller.pending() for poller in self.pollers}
        after = BUSY.snapshot()
        running, started = after
        return {
            "idle": before == after and running == 0 and not any(queues.values()),
            "running": running,
            "started": started,
            "queues": queues,
        }

    def run_now(self, name: str, payload: str) -> bool:
        """Core Tools' admin endpoint: run a non-HTTP function now, in the background."""
        spec = self.by_name.get(name.lower())
        if spec is None or spec.trigger_type == "httpTrigger":
            return False
        if spec.trigger_type == "timerTrigger":
            timer = next(t for t in self.timers if t.spec is spec)
            self._background(timer.fire, False)
            return True
        self._background(self._run_with_input, spec, payload)
        return True

    @staticmethod
    def _background(target: Any, *args: Any) -> None:
        """Counted as running from before the 202 is answered, so an idle report right after it
        cannot miss the run."""
        BUSY.begin()

        def run() -> None:
            try:
                target(*args)
            finally:
                BUSY.end()

        threading.Thread(target=run, daemon=True).start()

    def _run_with_input(self, spec: FunctionSpec, payload: str) -> None:
        from azure.functions.queue import QueueMessage

        trigger = (
            QueueMessage(body=payload.encode(), dequeue_count=1)
            if spec.trigger_type == "queueTrigger"
            else payload
        )
        with contextlib.suppress(Exception):  # logged by invoke
            _, outputs = invoke(spec, trigger)
            send_outputs(outputs)


def is_disabled(name: str, environ: Any) -> bool:
    """The host's per-function switch: app setting ``AzureWebJobs.<name>.Disabled`` = true."""
    return str(environ.get(f"AzureWebJobs.{name}.Disabled", "")).strip().lower() in ("true", "1")


def describe(spec: FunctionSpec, prefix: str, port: int) -> str:
    trigger = spec.trigger
    if spec.trigger_type == "httpTrigger":
        methods = ",".join(str(getattr(m, "value", m)) for m in trigger.get("methods") or ["*"])
        return f"[{methods}] http://127.0.0.1:{port}/{prefix}/{trigger.get('route') or spec.name}"
    if spec.trigger_type == "queueTrigger":
        return f"queueTrigger on {trigger['queueName']}"
    if spec.trigger_type == "timerTrigger":
        return f"timerTrigger '{trigger['schedule']}'"
    return spec.trigger_type


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)
