"""What the dev host knows about the app: its functions, read from the app's own registrations,
and how to invoke one the way the Python worker does (trigger argument, output bindings, context,
return value), with a log line per invocation carrying the function name and invocation id."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import azure.functions as func

log = logging.getLogger("host")
_invocation: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar(
    "invocation", default=("host", "-")
)


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    user_function: Callable[..., Any]
    trigger: dict[str, Any]  # the trigger binding as the app declares it (camelCase keys)
    outputs: tuple[dict[str, Any], ...] = field(default=())

    @property
    def trigger_type(self) -> str:
        return self.trigger["type"]


def index(app: func.FunctionApp) -> list[FunctionSpec]:
    specs = []
    for function in app.get_functions():
        bindings = [binding.get_dict_repr() for binding in function.get_bindings()]
        trigger = next(b for b in bindings if b["type"].endswith("Trigger"))
        outputs = tuple(b for b in bindings if b is not trigger and b["name"] != "$return")
        specs.append(
            FunctionSpec(function.get_function_name(), function.get_user_function(), trigger, outputs)
        )
    return specs


class Out(func.Out):
    """An output binding value; the host sends it only when the invocation succeeds."""

    def __init__(self) -> None:
        self.value: Any = None

    def set(self, val: Any) -> None:
        self.value = val

    def get(self) -> Any:
        return self.value


class Context:
    """The subset of ``func.Context`` functions use: names and ids for logs and tracing."""

    def __init__(self, name: str, invocation_id: str) -> None:
        self.function_name = name
        self.invocation_id = invocation_id
        self.function_directory = "."
        self.trace_context = None
        self.retry_context = None


def invoke(spec: FunctionSpec, trigger_value: Any) -> tuple[Any, dict[str, Any]]:
    """Run one invocation; return (return value, output binding values by binding)."""
    invocation_id = str(uuid.uuid4())
    token = _invocation.set((spec.name, invocation_id))
    outs = {binding["name"]: Out() for binding in spec.outputs}
    parameters = inspect.signature(spec.user_function).parameters
    kwargs: dict[str, Any] = {spec.trigger["name"]: trigger_value}
    kwargs.update({name: out for name, out in outs.items() if name in parameters})
    if "context" in parameters:
        kwargs["context"] = Context(spec.name, invocation_id)
    started = time.perf_counter()
    log.info("Executing '%s' (id=%s)", spec.name, invocation_id)
    try:
        result = spec.user_function(**kwargs)
        if inspect.isawaitable(result):
            result = asyncio.run(_await(result))
    except Exception:
        log.exception("Executed '%s' (Failed, id=%s, %.0f ms)", spec.name, invocation_id, _ms(started))
        raise
    else:
        log.info("Executed '%s' (Succeeded, id=%s, %.0f ms)", spec.name, invocation_id, _ms(started))
    finally:
        _invocation.reset(token)
    values = {
        b["name"]: (b, outs[b["name"]].value) for b in spec.outputs if outs[b["name"]].value is not None
    }
    return result, values


class Busy:
    """The host's work in progress, for the idle report (``GET /admin/host/idle``): ``running``
    counts what is under way (an HTTP invocation with its output bindings, a batch of queue messages
    from receive to delete, a timer or admin run), ``started`` every piece of work ever begun, so
    two equal snapshots mean nothing began or ended in between."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.started = 0

    def begin(self) -> None:
        with self._lock:
            self.running += 1
            self.started += 1

    def end(self) -> None:
        with self._lock:
            self.running -= 1

    @contextlib.contextmanager
    def working(self) -> Any:
        self.begin()
        try:
            yield
        finally:
            self.end()

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.running, self.started


BUSY = Busy()


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


class InvocationFilter(logging.Filter):
    """Stamps every record with the running function's name and invocation id."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.function, record.invocation = _invocation.get()
        return True


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(InvocationFilter())
    handler.setFormatter(
        logging.Formatter("%(asctime)s [%(function)s] [%(invocation)s] %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("azure", "urllib3", "werkzeug", "msal"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
