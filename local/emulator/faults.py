"""Run-time fault injection: status faults, dropped connections, latency, lost answers and holds."""

from __future__ import annotations

import threading

from .state import FaultRule, Store
from .web import Request, Response, graph_error

KINDS = {"503", "500", "429", "drop", "latency", "lost_response", "hold"}
CONNECTION_KINDS = {"drop", "lost_response", "hold"}  # never applied to $batch items


class Holds:
    """Requests matched by a `hold` fault wait here until the control API releases them."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._generation = 0
        self.waiting = 0

    def wait(self, timeout: float = 30.0) -> None:
        with self._lock:
            gen = self._generation
            self.waiting += 1
            self._lock.notify_all()
            try:
                self._lock.wait_for(lambda: self._generation != gen, timeout=timeout)
            finally:
                self.waiting -= 1
                self._lock.notify_all()

    def release(self) -> int:
        with self._lock:
            n = self.waiting
            self._generation += 1
            self._lock.notify_all()
            return n

    def wait_for_waiting(self, at_least: int, timeout: float) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: self.waiting >= at_least, timeout=timeout)


def parse_rule(spec: dict) -> FaultRule:
    kind = str(spec.get("kind", ""))
    if kind not in KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; one of {sorted(KINDS)}")
    duration = spec.get("duration_seconds")
    if duration is not None and (isinstance(duration, bool) or not isinstance(duration, int | float) or duration <= 0):
        raise ValueError("duration_seconds must be a positive number of seconds")
    allowed = set(FaultRule.__dataclass_fields__) - {"id", "hits", "ends_at"}
    unknown = set(spec) - allowed
    if unknown:
        raise ValueError(f"unknown fault fields {sorted(unknown)}")
    return FaultRule(**{k: spec[k] for k in spec if k in allowed})


def pick(store: Store, req: Request, area: str) -> FaultRule | None:
    """The first rule matching this request (consuming one of its `count`), or None."""
    with store.lock:
        now = store.clock.now()
        for rule in list(store.faults):
            if rule.area not in (area, "any") or rule.over(now):
                continue
            if req.inner and (not rule.inner or rule.kind in CONNECTION_KINDS):
                continue
            if rule.method and rule.method.upper() != req.method:
                continue
            if rule.path_contains and rule.path_contains not in req.path:
                continue
            if rule.mailbox and rule.mailbox != req.mailbox_id:
                continue
            if rule.count is not None and rule.count <= 0:
                continue
            if rule.probability < 1.0 and rule._rng.random() >= rule.probability:
                continue
            if rule.count is not None:
                rule.count -= 1
            rule.hits += 1
            return rule
        return None


def status_response(rule: FaultRule) -> Response:
    if rule.kind == "503":
        return graph_error(503, "serviceNotAvailable", "The service is temporarily unavailable. Retry later.",
                           {"Retry-After": _retry(rule.retry_after, 5)})
    if rule.kind == "429":
        return throttled_response(_retry(rule.retry_after, 10))
    return graph_error(500, "generalException", "An unspecified error has occurred.")


def _retry(value, default) -> str:
    v = default if value is None else value
    return str(int(v)) if float(v).is_integer() else str(v)


def throttled_response(retry_after: str) -> Response:
    """The documented 429 sample (concepts/throttling.md)."""
    import json
    import uuid
    from datetime import UTC, datetime

    rid = str(uuid.uuid4())
    body = {"error": {"code": "TooManyRequests",
                      "innerError": {"code": "429", "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                                     "message": "Please retry after", "request-id": rid, "status": "429"},
                      "message": "Please retry again later."}}
    return Response(429, {"Content-Type": "application/json", "Retry-After": retry_after, "request-id": rid},
                    json.dumps(body).encode())


def concurrency_response(retry_after: int) -> Response:
    """Real body seen for the mailbox concurrency limit (magodo/terraform-provider-outlook#21)."""
    import json

    body = {"error": {"code": "ApplicationThrottled",
                      "message": "Application is over its MailboxConcurrency limit."}}
    return Response(429, {"Content-Type": "application/json", "Retry-After": str(retry_after)},
                    json.dumps(body).encode())
