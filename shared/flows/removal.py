"""Removing our events from a mailbox ("Remove sync" with ``future`` or ``all``), as a job.

``disconnect`` (shared/flows/connect.py) stops the sync at once and, when there is something to
remove, ``start``s a job (shared/store/removals.py) and queues one ``mailbox-removal`` message. The
worker (``process``) then removes the events in ``$batch``es of 20 DELETEs, behind the mailbox's
throttle gate, all its in-flight slots and its ``BatchLease``, as the backfill does
(shared/flows/backfill_batch.py), a few batches per message, then queues the next message for the
rest. Only events we created are touched: the ids come from our own links, read in RowKey order
from the job's ``cursor``.

Resumable: before a ``$batch`` goes out, its links are marked ``removal_sent=<job>``; after it,
each link loses its event id and records ``removal_job``/``removal_result``. After a crash the
message comes back; links already done are no longer targets, and a 404 for a marked link counts
as removed (our DELETE went through before the crash). ``events_removed`` is counted from the
links when no target is left, so it is exact whatever crashed. An inner 429 closes the gate and the
rest waits its ``Retry-After``; 5xx and network failures back off; an event Graph refuses to delete
for another reason stays and counts as ``failed``.

The first run drops the user's kept CRM payloads (``kept_activities``, backfill pages), which
``disconnect`` leaves to the job so that it answers at once. When no target is left: the job is marked completed (ETag-guarded, so only one run completes it),
the user's token cache is deleted (kept until then: the removal needs it), and
``connection.disconnected`` with ``events_removed`` is queued with a fixed id, then marked sent; a
crash in between sends it again with the same id. A grant that no longer works ends the job
with what was removed so far (the rest stays in Outlook).
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from shared.flows.backfill_batch import batch_slots, throttle_pause
from shared.outlook.graph import BATCH_LIMIT
from shared.outlook.mailbox_client import mailbox_token
from shared.outlook.throttle import BatchLease, MailboxBusy, MailboxGate, MailboxGated, next_step
from shared.ports import Services, Storage
from shared.rules import callback_messages, queues
from shared.rules.calendars import ME, calendar_path, event_path
from shared.rules.errors import AuthError, ConflictError, ThrottledError, TransientError
from shared.rules.removal_plan import FAILED, GONE, REMOVED, RETRY, Target, is_target, outcome
from shared.store import connections, links, removals, tables, work_queues
from shared.store.connections import Connection
from shared.store.removals import COMPLETED, Removal
from shared.store.token_crypto import UndecryptableError

log = logging.getLogger(__name__)
MESSAGE_VERSION = 1
BATCHES_PER_MESSAGE = 10
TIME_BUDGET_SECONDS = 20.0
SENT, JOB, RESULT = "removal_sent", "removal_job", "removal_result"
IMMUTABLE_IDS = {"Prefer": 'IdType="ImmutableId"'}  # our links hold immutable ids, as push stores them
DONE, REQUEUED = "done", "requeued"


def target_of(stored: links.StoredLink, job_id: str) -> Target:
    end = stored.extra.get("end_utc")
    return Target(
        stored.link.activity_id,
        stored.link.outlook_event_id,
        datetime.fromisoformat(end.replace("Z", "+00:00")) if isinstance(end, str) else None,
        sent_before=stored.extra.get(SENT) == job_id,
        adopted=stored.link.adopted,
    )


def count_targets(storage: Storage, tenant: str, user: str, choice: str, cutoff: datetime) -> int:
    return sum(
        1 for stored in links.for_user(storage, tenant, user) if is_target(target_of(stored, ""), choice, cutoff)
    )


def message(removal: Removal, attempt: int = 0, throttled: int = 0) -> str:
    return json.dumps(
        {
            "v": MESSAGE_VERSION,
            "kind": "removal",
            "tenant": removal.tenant,
            "user": removal.user,
            "job": removal.job_id,
            "attempt": attempt,
            "throttled": throttled,
        }
    )


def enqueue(storage: Storage, removal: Removal, delay: float = 0, attempt: int = 0, throttled: int = 0) -> None:
    with tables.storage_errors("queueing the removal of events"):
        work_queues.send(
            storage,
            queues.MAILBOX_REMOVAL,
            removal.tenant,
            message(removal, attempt, throttled),
            delay_seconds=max(0, math.ceil(delay)),
        )


def start(
    services: Services, tenant: str, user: str, choice: str, now: datetime, calendar_id: str | None = None
) -> Removal | None:
    """Record the job and queue its first message; None when there is nothing to remove.
    ``calendar_id``: the user's dedicated calendar, deleted whole (``all`` only)."""
    total = count_targets(services.storage, tenant, user, choice, now)
    if total == 0 and not (calendar_id and choice == "all"):  # an empty dedicated calendar goes too
        return None
    previous = removals.get(services.storage, tenant, user)
    removal = Removal(
        tenant,
        user,
        uuid.uuid4().hex,
        choice,
        now,
        total=total,
        started_at=now,
        calendar_id=calendar_id if choice == "all" else None,
        etag=previous.etag if previous else None,
    )
    removal = removals.save(services.storage, removal, now)
    enqueue(services.storage, removal)
    return removal


def nudge(services: Services, removal: Removal, now: datetime) -> None:
    """A running job whose row has not moved for a while may have lost its message (a crash
    between recording the job and queueing it): queue another one. A spare message is harmless."""
    if removal.updated_at is None or (now - removal.updated_at).total_seconds() > 120:
        enqueue(services.storage, removal)


def forget_content(storage: Storage, tenant: str, user: str) -> None:
    """What a user who removed sync leaves behind: no CRM payloads (versions and counts stay) and
    no record of their captured meetings."""
    from shared.store import backfill_jobs, captured_events, kept_activities

    kept_activities.forget(storage, tenant, user)
    backfill_jobs.forget_payloads(storage, tenant, user)
    captured_events.forget_user(storage, tenant, user)


# --- the worker ------------------------------------------------------------------------------------


def process(services: Services, raw: bytes, now: datetime | None = None) -> str:
    """Handle one ``mailbox-removal`` message; queues its own continuation. Raises only for a
    message that cannot be read (the host's poison queue) or an unknown error (a bug)."""
    msg = json.loads(raw)
    if not isinstance(msg, dict) or msg.get("v") != MESSAGE_VERSION or msg.get("kind") != "removal":
        raise ValueError("not a mailbox-removal message of this version")
    return RemovalRun(services, msg).run(now or datetime.now(UTC))


class RemovalRun:
    def __init__(self, services: Services, msg: dict[str, Any]) -> None:
        self.services = services
        self.storage = services.storage
        self.tenant, self.user, self.job_id = msg["tenant"], msg["user"], msg["job"]
        self.attempt, self.throttled = int(msg.get("attempt", 0)), int(msg.get("throttled", 0))
        self.gate = MailboxGate(self.storage, self.tenant, self.user)
        self.mailbox = tables.key(self.tenant, self.user)
        self.token: str | None = None
        self.connection: Connection | None = None  # read by ``run``: which token, which mailbox path

    def run(self, now: datetime) -> str:
        removal = removals.get(self.storage, self.tenant, self.user)
        if removal is None or removal.job_id != self.job_id:
            return DONE  # a newer removal replaced this one; its own messages do the work
        if removal.state == COMPLETED:
            self.finish(removal)
            return DONE
        deadline = time.monotonic() + TIME_BUDGET_SECONDS
        if not removal.content_forgotten:
            removal = self.forget_content(removal)
        try:
            self.connection = connections.get(self.storage, self.tenant, self.user)
            self.token = mailbox_token(self.services, self.connection)
        except (AuthError, UndecryptableError):
            log.warning("The grant no longer works: the rest of the user's events stay in Outlook")
            return self.complete(removal, now)
        if removal.calendar_id and not removal.calendar_deleted:
            try:
                removal = self.delete_calendar(removal)
            except ThrottledError as throttled:  # the gate included
                return self.requeue(removal, throttled.retry_after, throttled=True)
            except (TransientError, ConflictError) as error:
                log.info("Deleting the dedicated calendar failed for now, retrying: %s", error.message)
                return self.requeue(removal, 0, transient=True)
            except AuthError:
                log.warning("The grant stopped working: the dedicated calendar stays in Outlook")
                return self.complete(removal, now)
        for _ in range(BATCHES_PER_MESSAGE):
            chunk = self.next_targets(removal)
            if not chunk:
                return self.complete(removal, now)
            try:
                results, wait = self.remove(chunk, calendar_gone=removal.calendar_deleted)
            except MailboxGated as gated:  # MailboxBusy included: another $batch of this mailbox
                return self.requeue(removal, gated.retry_after, throttled=not isinstance(gated, MailboxBusy))
            except ThrottledError as throttled:
                return self.requeue(removal, throttled.retry_after, throttled=True)
            except TransientError as error:
                log.info("Removing events failed for now, retrying: %s", error.message)
                return self.requeue(removal, 0, transient=True)
            except AuthError:
                log.warning("The grant stopped working mid-way: the rest of the user's events stay")
                return self.complete(removal, now)
            removal = self.progress(removal, chunk, results)
            if wait is not None:
                return self.requeue(removal, wait, throttled=True)
            if time.monotonic() > deadline:
                break
        return self.requeue(removal, 0)

    @property
    def mailbox_path(self) -> str:
        """``me``, or ``users/{id}`` for a user of organisation mode (issue 19)."""
        return self.connection.mailbox_path if self.connection is not None else ME

    # --- steps ---------------------------------------------------------------------------------

    def forget_content(self, removal: Removal) -> Removal:
        """No CRM content of a user who removed sync is kept (versions and counts stay). Done here,
        not in the HTTP call: thousands of kept payloads take a while to drop."""
        forget_content(self.storage, self.tenant, self.user)
        try:
            return removals.save(self.storage, replace(removal, content_forgotten=True))
        except ConflictError:
            latest = removals.get(self.storage, self.tenant, self.user)
            return latest if latest is not None else removal

    def next_targets(self, removal: Removal) -> list[links.StoredLink]:
        """Up to 20 links after the cursor whose events are to go, in RowKey order."""
        found: list[links.StoredLink] = []
        with tables.storage_errors("listing links to remove"):
            rows = self.storage.table(tables.LINKS).query_entities(
                "PartitionKey eq @pk and RowKey gt @cursor",
                parameters={"pk": links.partition(self.tenant, self.user), "cursor": removal.cursor},
            )
            for row in rows:
                stored = links.from_row(row)
                if stored.extra.get(RESULT) == FAILED and stored.extra.get(JOB) == self.job_id:
                    continue
                if is_target(target_of(stored, self.job_id), removal.choice, removal.cutoff):
                    found.append(stored)
                    if len(found) == BATCH_LIMIT:
                        break
        return found

    def delete_calendar(self, removal: Removal) -> Removal:
        """``all`` with a dedicated calendar: the calendar goes in one request, our events with it."""
        from shared.outlook.graph import NotFoundError

        assert removal.calendar_id and self.token is not None
        self.gate.check()
        try:
            self.services.graph.call(self.token, "DELETE", calendar_path(removal.calendar_id, mailbox=self.mailbox_path))
        except NotFoundError:
            pass  # the user deleted it already
        return removals.save(self.storage, replace(removal, calendar_deleted=True))

    def remove(self, chunk: list[links.StoredLink], calendar_gone: bool = False) -> tuple[dict[str, str], float | None]:
        """Mark the links, send one $batch of DELETEs, store each outcome; returns the results by
        activity id and, when Graph throttled some, how long to wait before the rest. With the
        dedicated calendar deleted, the events went with it: only the outcomes are stored."""
        if calendar_gone:
            self.save_outcomes([(stored, REMOVED) for stored in chunk])
            return {stored.link.activity_id: REMOVED for stored in chunk}, None
        marked = self.mark_sent(chunk)
        requests_ = [
            {
                "id": str(i),
                "method": "DELETE",
                "url": event_path(stored.link.outlook_event_id or "", absolute=True, mailbox=self.mailbox_path),
                "headers": IMMUTABLE_IDS,
            }
            for i, stored in enumerate(marked)
        ]
        answers = self.send_batch(requests_)
        results: dict[str, str] = {}
        wait: float | None = None
        saves = []
        sent = {stored.link.activity_id for stored in marked}
        for stored in chunk:
            if stored.link.activity_id not in sent:
                results[stored.link.activity_id] = RETRY  # changed meanwhile: read again, next round
        for i, stored in enumerate(marked):
            answer = answers.get(str(i))
            sent_before = stored.extra.get("_sent_before", False)
            result = outcome(answer.status if answer else 0, bool(sent_before))
            if result == RETRY:
                if answer is not None and answer.status == 429:
                    pause = throttle_pause(float(answer.headers.get("Retry-After") or 1))
                    self.gate.close(pause)
                    wait = max(wait or 0.0, pause)
                else:
                    wait = max(wait or 0.0, 1.0)
                results[stored.link.activity_id] = RETRY
                continue
            if result == FAILED:
                log.warning("An event could not be removed (Graph answered %s)", answer.status if answer else 0)
            results[stored.link.activity_id] = result
            saves.append((stored, result))
        self.save_outcomes(saves)
        return results, wait

    def mark_sent(self, chunk: list[links.StoredLink]) -> list[links.StoredLink]:
        """Write-ahead: each link records that this job's DELETE is going out (one transaction)."""
        from shared.store import backfill_jobs

        entities = []
        for stored in chunk:
            extra = {**stored.extra, SENT: self.job_id}
            entities.append(links.StoredLink(stored.link, stored.etag, extra))
        ops = [backfill_jobs.replace_op(_entity(self.tenant, self.user, s), s.etag) for s in entities]
        marked: list[links.StoredLink] = []
        try:
            answer = backfill_jobs.transact(self.storage, tables.LINKS, ops, "marking events to remove")
        except ConflictError:  # a worker changed a link meanwhile: one by one, skipping it this round
            for original, stored in zip(chunk, entities, strict=True):
                try:
                    saved = links.save(self.storage, self.tenant, self.user, stored)
                except ConflictError:
                    continue
                marked.append(self._with_sent(original, saved))
            return marked
        for original, stored, meta in zip(chunk, entities, answer, strict=True):
            marked.append(self._with_sent(original, replace(stored, etag=meta.get("etag"))))
        return marked

    def _with_sent(self, original: links.StoredLink, saved: links.StoredLink) -> links.StoredLink:
        extra = {**saved.extra, "_sent_before": original.extra.get(SENT) == self.job_id}
        return links.StoredLink(saved.link, saved.etag, extra)

    def save_outcomes(self, saves: list[tuple[links.StoredLink, str]]) -> None:
        """The link stays (its version still guards ordering); only the event is gone."""
        from shared.store import backfill_jobs

        rows = []
        for stored, result in saves:
            extra = {k: v for k, v in stored.extra.items() if k not in ("_sent_before", SENT)}
            extra.update({JOB: self.job_id, RESULT: result})
            link = stored.link
            if result in (REMOVED, GONE):
                link = replace(link, outlook_event_id=None, content_hash=None, change_key=None)
                extra = {k: v for k, v in extra.items() if k not in ("state", "end_utc", "web_link")}
            rows.append(links.StoredLink(link, stored.etag, extra))
        if not rows:
            return
        ops = [backfill_jobs.replace_op(_entity(self.tenant, self.user, s), s.etag) for s in rows]
        try:
            backfill_jobs.transact(self.storage, tables.LINKS, ops, "recording removed events")
        except ConflictError:
            for stored in rows:
                try:
                    links.save(self.storage, self.tenant, self.user, stored)
                except ConflictError:
                    pass  # changed meanwhile; a later pass (or the user's next look) sees the event is gone

    def send_batch(self, requests_: list[dict[str, Any]]) -> dict[str, Any]:
        """One $batch for this mailbox, behind the shared gate, all in-flight slots and the lease."""
        if not requests_:
            return {}
        self.gate.check()
        assert self.token is not None
        with batch_slots(self.mailbox), BatchLease(self.storage, self.tenant, self.user).held():
            self.gate.check_local()
            try:
                try:
                    return self.services.graph.batch(self.token, requests_)
                except AuthError:  # the access token may have been revoked early: one refresh
                    assert self.connection is not None
                    self.token = mailbox_token(self.services, self.connection, force_refresh=True)
                    return self.services.graph.batch(self.token, requests_)
            except ThrottledError as throttled:
                pause = throttle_pause(throttled.retry_after)
                self.gate.close(pause)
                raise MailboxGated(pause) from None

    def progress(self, removal: Removal, chunk: list[links.StoredLink], results: dict[str, str]) -> Removal:
        """Advance the cursor past a batch fully settled; count progress (status only)."""
        settled = [r for r in results.values() if r != RETRY]
        cursor = removal.cursor
        if RETRY not in results.values() and chunk:
            cursor = tables.key(chunk[-1].link.activity_id)
        updated = replace(
            removal,
            cursor=cursor,
            done=min(removal.total, removal.done + sum(r in (REMOVED, GONE) for r in settled)),
            failed=removal.failed + sum(r == FAILED for r in settled),
            attempt=0,
        )
        try:
            return removals.save(self.storage, updated)
        except ConflictError:  # another run of this job (a spare message) moved it: theirs is as good
            latest = removals.get(self.storage, self.tenant, self.user)
            return latest if latest is not None else removal

    def requeue(
        self, removal: Removal, delay: float, *, throttled: bool = False, transient: bool = False
    ) -> str:
        attempt, rounds = self.attempt, self.throttled
        if transient or throttled:
            step = next_step("throttled" if throttled else "transient", attempt, rounds, delay)
            if not step.retry:
                log.warning("Outlook kept failing: the rest of the user's events stay")
                return self.complete(removal, datetime.now(UTC))
            attempt, rounds = step.attempt, step.throttled
            delay = delay if throttled else step.delay
        enqueue(self.storage, removal, delay, attempt if transient else 0, rounds)
        return REQUEUED

    # --- the end -------------------------------------------------------------------------------

    def complete(self, removal: Removal, now: datetime) -> str:
        removed = self.count_removed()
        try:
            removal = removals.save(self.storage, removal.completed(removed, now))
        except ConflictError:
            latest = removals.get(self.storage, self.tenant, self.user)
            if latest is None or latest.job_id != self.job_id:
                return DONE
            if latest.state != COMPLETED:
                raise TransientError("the removal job changed meanwhile") from None
            removal = latest
        self.finish(removal)
        return DONE

    def count_removed(self) -> int:
        with tables.storage_errors("counting removed events"):
            rows = self.storage.table(tables.LINKS).query_entities(
                "PartitionKey eq @pk",
                parameters={"pk": links.partition(self.tenant, self.user)},
                select=[JOB, RESULT],
            )
            return sum(1 for row in rows if row.get(JOB) == self.job_id and row.get(RESULT) == REMOVED)

    def finish(self, removal: Removal) -> None:
        """Tokens go, then ``connection.disconnected`` is queued with the job's id, then marked sent."""
        if removal.callback_sent:
            return
        from shared.store import connections

        current = connections.get(self.storage, self.tenant, self.user)
        if current.state != connections.CONNECTED:  # a reconnect cannot start during a removal
            self.services.identity.forget(self.tenant, self.user)
        envelope = callback_messages.envelope(
            callback_messages.DISCONNECTED, self.tenant, self.user, {"events_removed": removal.events_removed}
        )
        envelope["id"] = removal.callback_id or envelope["id"]
        with tables.storage_errors("queueing connection.disconnected"):
            work_queues.send(self.storage, queues.CRM_CALLBACKS, self.tenant, json.dumps(envelope))
        try:
            removals.save(self.storage, replace(removal, callback_sent=True))
        except ConflictError:
            pass  # someone else marked it (or will send it again with the same id)
        log.info("Removal %s completed: %s event(s) removed", removal.job_id, removal.events_removed)


def _entity(tenant: str, user: str, stored: links.StoredLink) -> dict[str, Any]:
    entity = {name: getattr(stored.link, name) for name in links._LINK_FIELDS}
    entity.update({k: v for k, v in stored.extra.items() if not k.startswith("_")})
    entity = {k: v for k, v in entity.items() if v is not None}
    entity.update(PartitionKey=links.partition(tenant, user), RowKey=tables.key(stored.link.activity_id))
    return entity
