"""The ``activity-backfill`` worker: one message = up to 20 activities of one backfill page, applied
to the user's mailbox with ONE Graph ``$batch`` (design §4 "backfills use $batch").

For each message, never sleeping:

1. Read the chunk (``Jobs`` table), the connection and the links of its activities (two small
   queries), and plan every item (``shared.rules.backfill_plan.plan_item``). Items outside the window,
   unchanged or ineligible without an event settle at once (a changed link row is saved).
2. Items whose link shows someone else's unfinished create younger than the lease wait for it
   (re-queued for the rest of the lease). Items with a stale intent (a crash between Graph and the
   table) are looked up by our extended property, batched; found events are adopted.
3. (``shared.flows.backfill_batch``) Creates first write their intent (``state="creating"``, ETag-guarded, one table transaction),
   then all writes go out as one ``$batch`` (POST with ``transactionId``, PATCH, DELETE).
4. Per inner answer: success stores the link (one transaction); a 429 closes the mailbox gate
   and re-queues only the throttled items after their ``Retry-After`` (their intents are owned by
   the new message: a 429 was never executed, so no lookup is needed); 5xx / network failures
   re-queue with backoff and a lookup for creates (the outcome is unknown); other failures mark
   the link ``failed`` with ``last_error`` and count as failed in the job.
5. Settled items are counted in the job exactly once; the last one completes the job and sends
   ``backfill.completed``.

Pacing: the shared ``MailboxGate`` is checked before each ``$batch``; a ``$batch`` takes all
``MAX_IN_FLIGHT`` (4) ``InFlight`` slots of the mailbox, since Outlook runs four of its requests
at a time (graph-facts §1.3), so in one process at most one ``$batch`` (or four single pushes) is
in flight per mailbox, and the mailbox's ``BatchLease`` keeps other processes' batches out
meanwhile (one that finds it taken comes back a second later). Waiting for the slots blocks on a
semaphore; nothing polls or sleeps.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from shared.flows.backfill import MESSAGE_VERSION, message
from shared.flows.backfill_batch import (
    JOB_MARK,
    PREFER,
    RESULT_MARK,
    ChunkWrites,
    Pending,
    Retry,
    lookup_url,
    read_links,
)
from shared.outlook.throttle import (
    MailboxBusy,
    MailboxGate,
    MailboxGated,
    next_step,
)
from shared.ports import Services
from shared.rules.backfill_plan import (
    COUNTED,
    OUT_OF_WINDOW,
    category,
    intent_status,
    plan_item,
    reason,
)
from shared.rules.contract import ValidationError, parse_activity
from shared.rules.errors import (
    AuthError,
    ConflictError,
    PermanentError,
    SyncError,
    ThrottledError,
    TransientError,
)
from shared.rules.model import Activity, ActivityType
from shared.rules.sync_plan import Create, UserContext, after_lookup
from shared.store import backfill_jobs, connections, kept_activities, tables
from shared.store.connections import CONNECTED, Connection

log = logging.getLogger(__name__)

DONE, REQUEUED = "done", "requeued"


# --- one message ----------------------------------------------------------------------------------


class ChunkRun(ChunkWrites):
    """One message's run: read and plan the chunk, look up unfinished creates, hand the writes to
    ``ChunkWrites``, then settle the counts and re-queue what must wait."""

    def __init__(self, services: Services, msg: dict[str, Any], now: datetime) -> None:
        self.services = services
        self.storage = services.storage
        self.msg = msg
        self.now = now
        self.tenant, self.user = msg["tenant"], msg["user"]
        self.job_id, self.chunk = msg["job"], msg["chunk"]
        self.token = uuid.uuid4().hex  # owner of the intents this run writes
        self.calendar_id: str | None = None  # the user's calendar, read with the connection in run()
        self.connection: Connection | None = None  # read in run(): the mailbox's path and token kind
        self.gate = MailboxGate(self.storage, self.tenant, self.user)
        self.mailbox = tables.key(self.tenant, self.user)
        self._graph_token: str | None = None
        self.todo: list[int] = []
        self.unsent: dict[int, str] = {}  # intents written whose create is not sent yet
        self.results: dict[int, str] = {}
        self.errors: list[dict[str, str]] = []
        self.retries: list[Retry] = []
        self.activity_ids: dict[int, str] = {}
        self._duplicates: list[str] = []  # extra events of ours found by lookups

    # --- entry --------------------------------------------------------------------------------

    def run(self) -> str:
        job = backfill_jobs.get_job(self.storage, self.tenant, self.user, self.job_id)
        row = backfill_jobs.get_chunk(self.storage, self.tenant, self.user, self.chunk)
        if job is None or row is None:
            return DONE
        settled = backfill_jobs.results_of(row)
        wanted = self.msg.get("only")
        self.todo = [
            i for i in (wanted if wanted is not None else range(int(row["n"]))) if str(i) not in settled
        ]
        if not self.todo:
            backfill_jobs.finish(self.storage, job)
            return DONE
        payload = tables.unpack(row)
        connection = connections.get(self.storage, self.tenant, self.user)
        if connection.state != CONNECTED or payload is None:  # no payload: forgotten by "Remove sync"
            state = connection.state if payload is not None else connections.DISCONNECTED
            error = PermanentError(f"the user is {state.replace('_', ' ')}", code="not_connected")
            return self.give_up(self.todo, error)
        self.calendar_id = connection.calendar_id
        self.connection = connection
        context = UserContext(
            self.tenant,
            self.user,
            connected=True,
            mailbox_time_zone=connection.mailbox_time_zone,
            locale=connection.locale,
        )
        activities = {}
        for i in self.todo:
            try:
                activities[i] = parse_activity(payload[i])
            except ValidationError as error:  # validated at the edge; only a contract change gets here
                self.fail(i, None, PermanentError(f"no longer valid: {error}", code="invalid"))
                continue
            self.activity_ids[i] = activities[i].id
        stored = read_links(self.storage, self.tenant, self.user, sorted({a.id for a in activities.values()}))
        types = self._known_types({a.type.id for a in activities.values()}, row.get("received_at"))
        if any((types.get(a.type.id) or a.type).online_meeting for a in activities.values()):
            from shared.flows.calendars import online_providers

            context = replace(context, online_providers=online_providers(self.services, connection))
        plans: dict[int, Pending] = {}
        lookups: list[int] = []
        owned, must_look = self.msg.get("owned") or {}, set(self.msg.get("lookup") or [])
        for i, activity in activities.items():
            found = stored.get(activity.id)
            if found and found.extra.get(JOB_MARK) == self.job_id and found.extra.get(RESULT_MARK):
                # Already done by an earlier run of this message whose counting failed afterwards.
                self.results[i] = found.extra[RESULT_MARK]
                continue
            status = intent_status(found.extra if found else None, owned.get(str(i)))
            decision = plan_item(
                activity,
                found.link if found else None,
                context,
                self.now,
                past_days=self.services.settings.sync_window_past_days,
                completed_activities=self.services.settings.completed_activities,
                activity_type=types.get(activity.type.id),
            )
            if reason(decision) != OUT_OF_WINDOW:
                self._keep(activity, payload[i], row.get("received_at"))
            pending = Pending(i, decision, found, found.etag if found else None, COUNTED[category(decision)])
            plans[i] = pending
            if isinstance(decision.action, Create) and (status == "unfinished" or i in must_look):
                lookups.append(i)
        if lookups:
            self._lookup(lookups, plans)
        self._apply(plans)
        return self._close()

    # --- steps --------------------------------------------------------------------------------

    def _keep(self, activity: Activity, data: dict[str, Any], received_at: Any) -> None:
        """Keep the item as the push path keeps what it syncs, so a type's calendar flag turned
        back on (or a reconnect) brings backfilled activities back too. Items outside the window
        are not kept: nothing should ever put them in the calendar."""
        from shared.flows.activity_queue import keep_payload

        occurred_at = self.now if received_at is None else tables.aware(received_at)
        keep_payload(self.services, self.tenant, activity, data, occurred_at)

    def _known_types(self, type_ids: set[str], received_at: Any) -> dict[str, ActivityType]:
        """Activity types the CRM changed after this page was received (their flag wins)."""
        if received_at is None:
            return {}
        received = tables.aware(received_at)
        found = {
            t: kept_activities.known_type(self.storage, self.tenant, t, newer_than=received) for t in type_ids
        }
        return {t: activity_type for t, activity_type in found.items() if activity_type is not None}

    def _lookup(self, indexes: list[int], plans: dict[int, Pending]) -> None:
        """Find events of unfinished creates by our property (one $batch); adopt what is found."""
        requests = []
        for i in indexes:
            create = plans[i].decision.action
            assert isinstance(create, Create)
            requests.append(
                {
                    "id": str(i),
                    "method": "GET",
                    "url": lookup_url(create.lookup_value, self.calendar_id, self.mailbox_path),
                    "headers": {"Prefer": PREFER},
                }
            )
        answers = self.send_batch(requests)
        for i in indexes:
            pending = plans[i]
            answer = answers.get(str(i))
            problem = self._problem(answer)
            if problem is not None:
                del plans[i]
                owned = (self.msg.get("owned") or {}).get(str(i))
                self._retry_after_problem(i, problem, create=True, token=owned, lookup=True)
                continue
            adopted, duplicates = after_lookup(pending.decision, list((answer.body or {}).get("value", [])))
            if adopted is None:  # a newer version's event (a push's, its link not stored yet)
                del plans[i]
                self.results[i] = COUNTED["unchanged"]
                continue
            if isinstance(adopted.action, Create):
                continue  # never created: create now
            self._duplicates.extend(duplicates)
            pending.decision, pending.looked_up = adopted, True  # PATCHed to this version

    def fail(self, index: int, activity_id: str | None, error: SyncError) -> None:
        self.results[index] = "failed"
        text = f"{error.code}: {error.message}" if error.code else error.message
        self.errors.append(
            {"activity_id": activity_id or self.activity_ids.get(index, f"#{index}"), "error": text[:300]}
        )

    # --- closing ------------------------------------------------------------------------------

    def _close(self) -> str:
        for retry in merge_retries(self.retries):
            self._requeue(retry)
        job = backfill_jobs.settle(
            self.storage, self.tenant, self.user, self.job_id, self.chunk, self.results, self.errors
        )
        backfill_jobs.finish(self.storage, job)
        return REQUEUED if self.retries else DONE

    def _requeue(self, retry: Retry) -> None:
        attempt, throttled = self.msg.get("attempt", 0), self.msg.get("throttled", 0)
        delay = retry.delay
        if retry.kind in ("throttled", "transient"):
            step = next_step(retry.kind, attempt, throttled, float(retry.delay))
            if not step.retry:
                for i in retry.indexes:
                    self.fail(i, None, TransientError("Outlook kept failing or throttling", code=retry.kind))
                return
            attempt, throttled = step.attempt, step.throttled
            delay = retry.delay if retry.kind == "throttled" else step.delay
        body = message(
            self.tenant,
            self.user,
            self.job_id,
            self.chunk,
            only=sorted(retry.indexes),
            owned=retry.owned,
            lookup=sorted(retry.lookup),
            attempt=attempt,
            throttled=throttled,
        )
        from shared.rules.queues import ACTIVITY_BACKFILL
        from shared.store import work_queues

        with tables.storage_errors("re-queueing backfill work"):
            work_queues.send(
                self.storage, ACTIVITY_BACKFILL, self.tenant, body, delay_seconds=max(0, int(delay))
            )

    def requeue_all(self, kind: str, delay: float) -> str:
        """The whole message goes back (nothing of it reached Graph, or the failure came first)."""
        indexes = self.todo or self.msg.get("only")
        if indexes is None:
            row = backfill_jobs.get_chunk(self.storage, self.tenant, self.user, self.chunk)
            indexes = list(range(int(row["n"]))) if row is not None else []
        owned = {**(self.msg.get("owned") or {}), **{str(i): t for i, t in self.unsent.items()}}
        self.retries = [
            Retry(max(1, math.ceil(delay)), list(indexes), kind, list(self.msg.get("lookup") or []), owned)
        ]
        self.results.clear()
        self.errors.clear()
        return self._close()

    def give_up(self, indexes: list[int] | None, error: SyncError) -> str:
        if indexes is None:
            indexes = self.todo
        self.retries = []
        for i in indexes:
            if i not in self.results:
                self.fail(i, None, error)
        return self._close()


def merge_retries(retries: list[Retry]) -> list[Retry]:
    """One message per kind of retry: throttled items go back together after the longest
    Retry-After (graph-facts §2), so a throttled batch costs one more $batch, not one per item."""
    merged: dict[str, Retry] = {}
    for retry in retries:
        into = merged.get(retry.kind)
        if into is None:
            merged[retry.kind] = Retry(
                retry.delay, list(retry.indexes), retry.kind, list(retry.lookup), dict(retry.owned)
            )
            continue
        into.delay = max(into.delay, retry.delay)
        into.indexes.extend(i for i in retry.indexes if i not in into.indexes)
        into.lookup.extend(i for i in retry.lookup if i not in into.lookup)
        into.owned.update(retry.owned)
    return list(merged.values())


def process(services: Services, raw: bytes, now: datetime | None = None) -> str:
    """Handle one ``activity-backfill`` message; re-queues what must wait itself. Raises only for
    a message that cannot be read (the host's poison queue) or an unknown error (a bug)."""
    msg = json.loads(raw)
    if not isinstance(msg, dict) or msg.get("v") != MESSAGE_VERSION or msg.get("kind") != "chunk":
        raise ValueError("not an activity-backfill message of this version")
    run = ChunkRun(services, msg, now or datetime.now(UTC))
    try:
        return run.run()
    except MailboxBusy as busy:  # another process's $batch: wait, without spending the retry budget
        return run.requeue_all("wait", busy.retry_after)
    except MailboxGated as gated:
        return run.requeue_all("throttled", gated.retry_after)
    except ThrottledError as throttled:
        return run.requeue_all("throttled", throttled.retry_after)
    except (TransientError, ConflictError) as error:
        log.info("Backfill chunk failed for now, retrying: %s", error.message)
        return run.requeue_all("transient", 0)
    except AuthError as error:
        from shared.flows.reauth import require_reauth

        require_reauth(services, run.tenant, run.user, error.code or "invalid_grant")
        return run.give_up(None, PermanentError("Sign in with Outlook again", code="reauth_required"))
    except PermanentError as error:
        return run.give_up(None, error)
