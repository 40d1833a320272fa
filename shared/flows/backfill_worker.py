"""The ``activity-backfill`` worker: one message = up to 20 activities of one backfill page, applied
to the user's mailbox with ONE Graph ``$batch`` (design §4 "backfills use $batch").

For each message, never sleeping:

1. Read the chunk (``Jobs`` table), the connection and the links of its activities (two small
   queries), and plan every item (``shared.rules.backfill_plan.plan_item``). Items outside the window,
   unchanged or ineligible without an event settle at once (a changed link row is saved).
2. Items whose link shows someone else's unfinished create younger than the lease wait for it
   (re-queued for the rest of the lease). Items with a stale intent (a crash between Graph and the
   table) are looked up by our extended property, batched; found events are adopted.
3. Creates first write their intent (``state="creating"``, ETag-guarded, one table transaction),
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
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from shared.flows.backfill import MESSAGE_VERSION, message
from shared.outlook.graph import BATCH_LIMIT, GraphResponse, NotFoundError, error_for
from shared.outlook.throttle import (
    MAX_IN_FLIGHT,
    BatchLease,
    InFlight,
    MailboxBusy,
    MailboxGate,
    MailboxGated,
    next_step,
)
from shared.ports import Services, Storage
from shared.rules.backfill_plan import (
    COUNTED,
    CREATING,
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
from shared.rules.event_render import PROPERTY_ID
from shared.rules.event_time import graph_to_utc
from shared.rules.model import Activity, ActivityType
from shared.rules.sync_plan import Create, Decision, Delete, Link, Nothing, Update, UserContext, adopt, after
from shared.store import backfill_jobs, connections, kept_activities, links, tables
from shared.store.connections import CONNECTED, iso

log = logging.getLogger(__name__)

DONE, REQUEUED = "done", "requeued"
PREFER = 'IdType="ImmutableId"'
LOOKUP_SELECT = "id,changeKey,webLink,end"
MAX_FILTER_IDS = 14  # Table Storage allows 15 comparisons per filter; one is the PartitionKey
_LINK_FIELDS = tuple(f.name for f in fields(Link))
_NOT_CARRIED = ("last_error", "failed_version", CREATING)
# After a throttle the mailbox rests at least this long, even when Retry-After is shorter. Outlook's
# sliding window frees slots about as fast as they were used, so a 1 s rest buys only a small
# burst: one partial $batch plus one more for its remnant, every second. A longer rest gives the
# same throughput (the freed slots wait, as long as the rest stays well under the window) in
# full batches, and keeps a backfill near one $batch per 20 activities.
THROTTLE_PAUSE = 5.0
# A link written by a backfill remembers the job and what it counted as, so a run repeated after
# the counting failed counts the same again (instead of "unchanged" for its own create).
JOB_MARK, RESULT_MARK = "backfill_job", "backfill_result"


def throttle_pause(retry_after: float) -> float:
    return max(retry_after, THROTTLE_PAUSE)


# --- pacing ---------------------------------------------------------------------------------------

_batch_locks: dict[str, threading.Lock] = {}
_batch_locks_guard = threading.Lock()


@contextmanager
def batch_slots(mailbox: str) -> Iterator[None]:
    """All ``MAX_IN_FLIGHT`` slots of the mailbox for one ``$batch``. Taken one batch at a time
    per mailbox, so two batches never each hold half the slots."""
    with _batch_locks_guard:
        lock = _batch_locks.setdefault(mailbox, threading.Lock())
    with lock, ExitStack() as held:
        for _ in range(MAX_IN_FLIGHT):
            held.enter_context(InFlight.slot(mailbox))
        yield


# --- links ----------------------------------------------------------------------------------------


def _link_entity(tenant: str, user: str, link: Link, extra: dict[str, Any]) -> dict[str, Any]:
    entity = {name: getattr(link, name) for name in _LINK_FIELDS}
    entity.update(extra)
    entity = {k: v for k, v in entity.items() if v is not None}
    entity.update(PartitionKey=links.partition(tenant, user), RowKey=tables.key(link.activity_id))
    return entity


def read_links(storage: Storage, tenant: str, user: str, activity_ids: list[str]) -> dict[str, links.StoredLink]:
    found: dict[str, links.StoredLink] = {}
    table = storage.table(tables.LINKS)
    for start in range(0, len(activity_ids), MAX_FILTER_IDS):
        group = activity_ids[start : start + MAX_FILTER_IDS]
        params = {"pk": links.partition(tenant, user)}
        params.update({f"r{i}": tables.key(aid) for i, aid in enumerate(group)})
        clause = " or ".join(f"RowKey eq @r{i}" for i in range(len(group)))
        with tables.storage_errors("reading links"):
            for row in table.query_entities(f"PartitionKey eq @pk and ( {clause} )", parameters=params):
                stored = links.from_row(row)
                found[stored.link.activity_id] = stored
    return found


def synced_extra(
    previous: dict[str, Any] | None, link: Link | None, event: dict[str, Any] | None
) -> dict[str, Any]:
    """The link row's extra fields once Outlook shows what the link says (as the push path keeps them)."""
    extra = {k: v for k, v in (previous or {}).items() if k not in _NOT_CARRIED}
    extra["state"] = links.SYNCED
    if not (link and link.outlook_event_id):
        extra.pop("web_link", None)
        extra.pop("end_utc", None)
        return extra
    event = event or {}
    if event.get("webLink"):
        extra["web_link"] = event["webLink"]
    if isinstance(event.get("end"), dict):
        extra["end_utc"] = iso(graph_to_utc(event["end"]))
    return extra


def failed_extra(previous: dict[str, Any] | None, error: SyncError, version: int) -> dict[str, Any]:
    extra = {k: v for k, v in (previous or {}).items() if k not in _NOT_CARRIED}
    text = f"{error.code}: {error.message}" if error.code else error.message
    extra.update(state=links.FAILED, last_error=text[:1000], failed_version=version)
    return extra


def lookup_url(value: str) -> str:
    query = f"singleValueExtendedProperties/Any(ep: ep/id eq '{PROPERTY_ID}' and ep/value eq '{value}')"
    return "/me/events?" + urlencode({"$filter": query, "$select": LOOKUP_SELECT}, quote_via=quote)


# --- one message ----------------------------------------------------------------------------------


@dataclass
class Pending:
    """One item on its way through the run."""

    index: int
    decision: Decision
    stored: links.StoredLink | None
    etag: str | None  # of the row as last read or written by this run
    counted: str  # what it counts as once done (COUNTED of the planned category)
    adopted_event: dict[str, Any] | None = None


@dataclass
class Retry:
    delay: int
    indexes: list[int]
    kind: str  # throttled | transient | wait
    lookup: list[int]
    owned: dict[str, str]


class ChunkRun:
    def __init__(self, services: Services, msg: dict[str, Any], now: datetime) -> None:
        self.services = services
        self.storage = services.storage
        self.msg = msg
        self.now = now
        self.tenant, self.user = msg["tenant"], msg["user"]
        self.job_id, self.chunk = msg["job"], msg["chunk"]
        self.token = uuid.uuid4().hex  # owner of the intents this run writes
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
        from shared.flows.push import keep_payload

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
                    "url": lookup_url(create.lookup_value),
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
            found = list((answer.body or {}).get("value", []))
            if not found:
                continue  # never created: create now
            create = pending.decision.action
            assert isinstance(create, Create)
            self._duplicates.extend(e["id"] for e in found[1:])
            pending.decision = adopt(pending.decision, found[0]["id"])  # PATCHed to this version

    def _apply(self, plans: dict[int, Pending]) -> None:
        saves: list[tuple[Pending, Link, dict[str, Any], str | None]] = []  # (item, link, extra, created id)
        writes: list[Pending] = []
        creates: list[Pending] = []
        for pending in plans.values():
            action = pending.decision.action
            before = pending.stored.link if pending.stored else None
            if isinstance(action, Nothing):
                link = pending.decision.link
                if (
                    action.reason != OUT_OF_WINDOW
                    and link is not None
                    and (link != before or pending.adopted_event is not None)
                ):
                    extra = synced_extra(
                        pending.stored.extra if pending.stored else None, link, pending.adopted_event
                    )
                    saves.append((pending, link, extra, None))
                else:
                    self.results[pending.index] = pending.counted
            elif isinstance(action, Create):
                creates.append(pending)
            else:
                writes.append(pending)
        overflow = len(creates) + len(writes) + len(self._duplicates) - BATCH_LIMIT
        if overflow > 0:  # only after lookups found duplicates: the rest goes in the next message
            later = (writes + creates)[-overflow:]
            writes = [p for p in writes if p not in later]
            creates = [p for p in creates if p not in later]
            self.retries.append(Retry(0, [p.index for p in later], "wait", [], {}))
        creates = self._write_intents(creates)
        requests = []
        for pending in creates:
            action = pending.decision.action
            assert isinstance(action, Create)
            requests.append(
                {
                    "id": str(pending.index),
                    "method": "POST",
                    "url": "/me/events",
                    "headers": {"Content-Type": "application/json", "Prefer": PREFER},
                    "body": action.event,
                }
            )
        for pending in writes:
            action = pending.decision.action
            if isinstance(action, Update):
                requests.append(
                    {
                        "id": str(pending.index),
                        "method": "PATCH",
                        "url": f"/me/events/{quote(action.event_id, safe='')}",
                        "headers": {"Content-Type": "application/json", "Prefer": PREFER},
                        "body": action.patch,
                    }
                )
            elif isinstance(action, Delete):
                requests.append(
                    {
                        "id": str(pending.index),
                        "method": "DELETE",
                        "url": f"/me/events/{quote(action.event_id, safe='')}",
                    }
                )
        for n, event_id in enumerate(self._duplicates):
            requests.append(
                {"id": f"dup{n}", "method": "DELETE", "url": f"/me/events/{quote(event_id, safe='')}"}
            )
        answers: dict[str, GraphResponse] = {}
        if requests:
            try:
                answers = self.send_batch(requests)
            except TransientError as error:
                if (
                    isinstance(error, ThrottledError)
                    and error.status == 429
                    or isinstance(error, MailboxGated)
                ):
                    raise  # nothing was carried out: the whole message goes back, intents owned
                # The batch may or may not have been carried out: creates look up first next time.
                self.unsent.clear()
                for pending in creates + writes:
                    is_create = isinstance(pending.decision.action, Create)
                    self._retry_after_problem(
                        pending.index, error, create=is_create, token=self.token, lookup=is_create
                    )
                creates, writes = [], []
            self.unsent.clear()
        for pending in creates + writes:
            self._outcome(pending, answers.get(str(pending.index)), saves)
        self._save(saves)

    def _write_intents(self, creates: list[Pending]) -> list[Pending]:
        """Record each create before it is sent; returns the creates whose intent was written."""
        if not creates:
            return []
        # The link stays as it was (a new one at version -1), so a retry plans the very same create.
        entities = []
        for p in creates:
            base = p.stored.link if p.stored else Link(self.activity_ids[p.index], -1)
            extra = {**(p.stored.extra if p.stored else {}), CREATING: self.token}
            entities.append((p, base, extra, _link_entity(self.tenant, self.user, base, extra)))
        try:
            answer = backfill_jobs.transact(
                self.storage,
                tables.LINKS,
                [backfill_jobs.replace_op(entity, p.etag) for p, _, _, entity in entities],
                "recording create intents",
            )
        except ConflictError:
            written = []
            for p, base, extra, _ in entities:
                try:
                    saved = links.save(
                        self.storage, self.tenant, self.user, links.StoredLink(base, p.etag, extra)
                    )
                except ConflictError:
                    self.retries.append(Retry(0, [p.index], "wait", [], {}))  # changed meanwhile: plan again
                    continue
                p.etag = saved.etag
                written.append(p)
        else:
            for (p, *_), meta in zip(entities, answer, strict=True):
                p.etag = meta.get("etag")
            written = [p for p, *_ in entities]
        for p in written:
            self.unsent[p.index] = self.token
        return written

    def _problem(self, answer: GraphResponse | None) -> SyncError | None:
        if answer is None:
            return TransientError("Graph gave no answer for this request")
        return error_for(answer.status, answer.headers, answer.body)

    def _outcome(self, pending: Pending, answer: GraphResponse | None, saves: list) -> None:
        action = pending.decision.action
        problem = self._problem(answer)
        previous = pending.stored.extra if pending.stored else None
        if problem is None or (isinstance(action, Delete) and isinstance(problem, NotFoundError)):
            body = (answer.body if answer else None) or {}
            if isinstance(action, Create):
                link = after(pending.decision, event_id=body["id"], change_key=body.get("changeKey"))
                saves.append((pending, link, synced_extra(previous, link, body), body["id"]))
            elif isinstance(action, Update):
                link = after(pending.decision, change_key=body.get("changeKey"))
                saves.append((pending, link, synced_extra(previous, link, body), None))
            else:
                link = pending.decision.link
                saves.append((pending, link, synced_extra(previous, link, None), None))
            return
        if isinstance(action, Update) and isinstance(problem, NotFoundError):
            # Our event was deleted in Outlook: forget it and create it again on the next round.
            base = pending.stored.link if pending.stored else pending.decision.link
            link = replace(base, outlook_event_id=None, content_hash=None, change_key=None)
            saves.append((pending, link, synced_extra(previous, link, None), "gone"))
            return
        is_create = isinstance(action, Create)
        if is_create and problem.code == "ErrorDuplicateTransactionId":  # a create of ours went through
            self._retry_after_problem(
                pending.index, TransientError(problem.message), create=True, token=self.token, lookup=True
            )
            return
        if isinstance(problem, TransientError | AuthError):
            # An inner 429 was never carried out; any other failure may have been.
            executed = not (isinstance(problem, ThrottledError) and problem.status == 429)
            self._retry_after_problem(
                pending.index, problem, create=is_create, token=self.token, lookup=is_create and executed
            )
            return
        version = pending.decision.link.version if pending.decision.link else 0
        base = (
            pending.decision.link
            if isinstance(action, Create)
            else (pending.stored.link if pending.stored else None)
        )
        if base is not None:
            saves.append((pending, base, failed_extra(previous, problem, version), "failed"))
        self.fail(pending.index, None, problem)

    def _retry_after_problem(
        self, index: int, problem: SyncError, *, create: bool, token: str | None, lookup: bool
    ) -> None:
        """Try the item again later: after Graph's Retry-After when throttled (closing the gate
        for everyone), else with backoff. ``token`` hands this run's intent to the next run."""
        owned = {str(index): token} if create and token else {}
        looked = [index] if lookup else []
        if isinstance(problem, ThrottledError):
            pause = throttle_pause(problem.retry_after)
            self.gate.close(pause)
            self.retries.append(Retry(math.ceil(pause), [index], "throttled", looked, owned))
        else:
            self.retries.append(Retry(0, [index], "transient", looked, owned))

    def _save(self, saves: list[tuple[Pending, Link, dict[str, Any], str | None]]) -> None:
        """Store the links (one transaction; one by one if someone else wrote meanwhile)."""
        if not saves:
            return
        saves = [
            (
                p,
                link,
                extra
                if note in ("failed", "gone")
                else {**extra, JOB_MARK: self.job_id, RESULT_MARK: p.counted},
                note,
            )
            for p, link, extra, note in saves
        ]
        ops = [
            backfill_jobs.replace_op(_link_entity(self.tenant, self.user, link, extra), p.etag)
            for p, link, extra, _ in saves
        ]
        try:
            backfill_jobs.transact(self.storage, tables.LINKS, ops, "storing links")
            stored_all = True
        except ConflictError:
            stored_all = False
        orphans = []
        for pending, link, extra, note in saves:
            if not stored_all:
                try:
                    links.save(
                        self.storage, self.tenant, self.user, links.StoredLink(link, pending.etag, extra)
                    )
                except ConflictError:
                    # Someone else (a push) wrote this link meanwhile: our new event would be a
                    # second one, so it goes, and the item is planned again from their row.
                    if note not in (None, "gone", "failed"):
                        orphans.append(note)
                    self.retries.append(Retry(0, [pending.index], "wait", [], {}))
                    continue
            if note == "gone":
                self.retries.append(Retry(0, [pending.index], "wait", [], {}))
            elif note == "failed":
                continue  # counted by fail()
            else:
                self.results[pending.index] = pending.counted
        if orphans:
            try:
                self.send_batch(
                    [
                        {"id": str(n), "method": "DELETE", "url": f"/me/events/{quote(e, safe='')}"}
                        for n, e in enumerate(orphans)
                    ]
                )
            except SyncError as error:
                log.warning("A duplicate event from a race could not be removed yet: %s", error.message)

    def fail(self, index: int, activity_id: str | None, error: SyncError) -> None:
        self.results[index] = "failed"
        text = f"{error.code}: {error.message}" if error.code else error.message
        self.errors.append(
            {"activity_id": activity_id or self.activity_ids.get(index, f"#{index}"), "error": text[:300]}
        )

    # --- Graph --------------------------------------------------------------------------------

    def send_batch(self, requests: list[dict[str, Any]]) -> dict[str, GraphResponse]:
        """One $batch for this mailbox, behind the shared gate and the in-flight slots."""
        self.gate.check()
        if self._graph_token is None:
            self._graph_token = self.services.identity.access_token(self.tenant, self.user)
        with batch_slots(self.mailbox), BatchLease(self.storage, self.tenant, self.user).held():
            self.gate.check_local()
            try:
                try:
                    return self.services.graph.batch(self._graph_token, requests)
                except AuthError:  # the access token may have been revoked early: one refresh
                    self._graph_token = self.services.identity.access_token(
                        self.tenant, self.user, force_refresh=True
                    )
                    return self.services.graph.batch(self._graph_token, requests)
            except ThrottledError as throttled:
                pause = throttle_pause(throttled.retry_after)
                self.gate.close(pause)
                raise MailboxGated(pause) from None

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

        with tables.storage_errors("re-queueing backfill work"):
            self.storage.send(ACTIVITY_BACKFILL, body, delay_seconds=max(0, int(delay)))

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
