"""One ``$batch`` of a backfill chunk: the writing half of ``backfill_worker.ChunkRun``.

Creates first write their intent (``state="creating"``, ETag-guarded, one table transaction),
then all writes go out as one ``$batch`` (POST with ``transactionId``, PATCH, DELETE) behind the
mailbox's throttle gate, all its in-flight slots and its ``BatchLease``. Each inner answer is
settled: success stores the link (one transaction), a 429 closes the gate and re-queues only the
throttled items after their ``Retry-After``, 5xx and network failures re-queue with backoff (and a
lookup for creates, whose outcome is unknown), other failures mark the link ``failed``.

Also here: the link rows a chunk reads and writes, and the pacing of batches per mailbox.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from shared.outlook.graph import BATCH_LIMIT, GraphResponse, NotFoundError, error_for
from shared.outlook.mailbox_client import mailbox_token
from shared.outlook.throttle import (
    MAX_IN_FLIGHT,
    BatchLease,
    InFlight,
    MailboxGate,
    MailboxGated,
)
from shared.ports import Services, Storage
from shared.rules.backfill_plan import (
    CREATING,
    OUT_OF_WINDOW,
)
from shared.rules.calendars import ME, event_path, graph_path
from shared.rules.errors import (
    AuthError,
    ConflictError,
    SyncError,
    ThrottledError,
    TransientError,
)
from shared.rules.event_render import VERSION_EXPAND, lookup_params
from shared.rules.event_time import graph_to_utc
from shared.rules.sync_plan import Create, Decision, Delete, Link, Nothing, Update, after, join_url_of
from shared.store import backfill_jobs, connections, links, tables
from shared.store.connections import Connection, iso

log = logging.getLogger(__name__)

PREFER = 'IdType="ImmutableId"'
MAX_FILTER_IDS = 14  # Table Storage allows 15 comparisons per filter; one is the PartitionKey
_LINK_FIELDS = tuple(f.name for f in fields(Link))
_NOT_CARRIED = ("last_error", "failed_version", CREATING, links.DELETING)
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


def lookup_url(value: str, calendar_id: str | None, mailbox: str = ME) -> str:
    params = urlencode(lookup_params(value), quote_via=quote)
    return f"{graph_path(calendar_id, 'events', absolute=True, mailbox=mailbox)}?{params}"


# --- a run's items -------------------------------------------------------------------------------


@dataclass
class Pending:
    """One item on its way through the run."""

    index: int
    decision: Decision
    stored: links.StoredLink | None
    etag: str | None  # of the row as last read or written by this run
    counted: str  # what it counts as once done (COUNTED of the planned category)
    adopted_event: dict[str, Any] | None = None
    looked_up: bool = False  # an Update of the event a lookup found (a create whose answer was lost)


@dataclass
class Retry:
    delay: int
    indexes: list[int]
    kind: str  # throttled | transient | wait
    lookup: list[int]
    owned: dict[str, str]


class ChunkWrites:
    """The Graph-writing steps of a ``ChunkRun`` (which holds the state named here and provides
    ``fail`` and ``_retry_after_problem``'s callers)."""

    services: Services
    storage: Storage
    msg: dict[str, Any]
    now: datetime
    tenant: str
    user: str
    job_id: str
    token: str
    calendar_id: str | None  # the user's calendar (None: the default one)
    connection: Connection | None  # the user's connection, once read (mode and mailbox path)
    gate: MailboxGate
    mailbox: str
    _graph_token: str | None
    unsent: dict[int, str]
    results: dict[int, str]
    retries: list[Retry]
    _duplicates: list[str]

    def fail(self, index: int, activity_id: str | None, error: SyncError) -> None:
        raise NotImplementedError

    @property
    def mailbox_path(self) -> str:
        """``me``, or ``users/{id}`` for an app-only user (issue 19)."""
        return self._connection().mailbox_path

    def _connection(self) -> Connection:
        if self.connection is None:
            self.connection = connections.get(self.storage, self.tenant, self.user)
        return self.connection

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
        writes = self._mark_deletes(writes)
        requests = []
        for pending in creates:
            action = pending.decision.action
            assert isinstance(action, Create)
            requests.append(
                {
                    "id": str(pending.index),
                    "method": "POST",
                    "url": graph_path(self.calendar_id, "events", absolute=True, mailbox=self.mailbox_path),
                    "headers": {"Content-Type": "application/json", "Prefer": PREFER},
                    "body": action.event,
                }
            )
        for pending in writes:
            action = pending.decision.action
            if isinstance(action, Update):
                headers = {"Content-Type": "application/json", "Prefer": PREFER}
                known = pending.decision.link.change_key if pending.decision.link else None
                if known:  # as the push does: never write over an edit made since (design §4)
                    headers["If-Match"] = f'W/"{known}"'  # the event's @odata.etag form
                requests.append(
                    {
                        "id": str(pending.index),
                        "method": "PATCH",
                        "url": event_path(action.event_id, absolute=True, mailbox=self.mailbox_path),
                        "headers": headers,
                        "body": action.patch,
                    }
                )
            elif isinstance(action, Delete):
                requests.append(
                    {
                        "id": str(pending.index),
                        "method": "DELETE",
                        "url": event_path(action.event_id, absolute=True, mailbox=self.mailbox_path),
                    }
                )
        for n, event_id in enumerate(self._duplicates):
            requests.append(
                {"id": f"dup{n}", "method": "DELETE", "url": event_path(event_id, absolute=True, mailbox=self.mailbox_path)}
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
        edited: list[Pending] = []
        for pending in creates + writes:
            self._outcome(pending, answers.get(str(pending.index)), saves, edited)
        self._save(saves)
        self._absorb_edits(edited)

    def _write_intents(self, creates: list[Pending]) -> list[Pending]:
        """Record each create before it is sent; returns the creates whose intent was written."""
        # The link stays as it was (a new one at version -1), so a retry plans the very same create.
        written = self._write_marks(
            [
                (p, p.stored.link if p.stored else Link(self.activity_ids[p.index], -1), CREATING, self.token)
                for p in creates
            ],
            "recording create intents",
        )
        for p in written:
            self.unsent[p.index] = self.token
        return written

    def _mark_deletes(self, writes: list[Pending]) -> list[Pending]:
        """Mark each delete "deleting" before it is sent (as the push does), so a reconcile that
        reads the event gone before its link is stored does not report our deletion as the
        user's. Returns the writes to send: the updates, and the deletes whose mark was written."""
        deletes = [
            (p, p.stored.link, links.DELETING, f"v{p.decision.link.version if p.decision.link else 0}")
            for p in writes
            if isinstance(p.decision.action, Delete) and p.stored is not None
        ]
        marked = {p.index for p in self._write_marks(deletes, "recording delete intents")}
        unmarked = {p.index for p, *_ in deletes} - marked
        return [p for p in writes if p.index not in unmarked]

    def _write_marks(self, items: list[tuple[Pending, Link, str, str]], what: str) -> list[Pending]:
        """Write the mark ``name = value`` on each item's link (kept as it is), ETag-guarded;
        returns the items whose mark was written (the others are planned again)."""
        if not items:
            return []
        entities = []
        for p, base, name, value in items:
            extra = {**(p.stored.extra if p.stored else {}), name: value}
            entities.append((p, base, extra, _link_entity(self.tenant, self.user, base, extra)))
        try:
            answer = backfill_jobs.transact(
                self.storage,
                tables.LINKS,
                [backfill_jobs.replace_op(entity, p.etag) for p, _, _, entity in entities],
                what,
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
        return written

    def _problem(self, answer: GraphResponse | None) -> SyncError | None:
        if answer is None:
            return TransientError("Graph gave no answer for this request")
        return error_for(answer.status, answer.headers, answer.body)

    def _outcome(self, pending: Pending, answer: GraphResponse | None, saves: list, edited: list[Pending]) -> None:
        action = pending.decision.action
        problem = self._problem(answer)
        previous = pending.stored.extra if pending.stored else None
        if problem is None or (isinstance(action, Delete) and isinstance(problem, NotFoundError)):
            body = (answer.body if answer else None) or {}
            if isinstance(action, Create):
                link = after(pending.decision, event_id=body["id"], change_key=body.get("changeKey"),
                             join_url=join_url_of(body))
                saves.append((pending, link, synced_extra(previous, link, body), body["id"]))
            elif isinstance(action, Update):
                link = after(pending.decision, change_key=body.get("changeKey"), join_url=join_url_of(body))
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
        if isinstance(action, Update) and problem.status == 412:
            if pending.looked_up:  # a newer version written there since the lookup: look again
                self._retry_after_problem(
                    pending.index, TransientError(problem.message), create=True, token=None, lookup=True
                )
            else:
                edited.append(pending)  # the user edited the event since the link's changeKey
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

    def _absorb_edits(self, edited: list[Pending]) -> None:
        """Updates Outlook refused with 412: the user edited the event after the link's changeKey.
        As the push does, each event is read, the edit reported, the link made to hold its
        changeKey, and the item planned again (its next PATCH keeps the user's two-way fields)."""
        if not edited:
            return
        from shared.flows.push_apply import EDIT_SELECT, absorb_outlook_edit

        query = urlencode({"$select": EDIT_SELECT, "$expand": VERSION_EXPAND}, quote_via=quote)
        requests = []
        for p in edited:
            assert isinstance(p.decision.action, Update)
            url = event_path(p.decision.action.event_id, absolute=True, mailbox=self.mailbox_path)
            requests.append({"id": str(p.index), "method": "GET", "url": f"{url}?{query}"})
        try:
            answers = self.send_batch(requests)
        except SyncError as error:
            log.info("Events edited in Outlook could not be read yet: %s", error.message)
            answers = {}
        for p in edited:
            answer = answers.get(str(p.index))
            if answer is not None and answer.status == 200 and answer.body and p.decision.link:
                activity_id = p.decision.link.activity_id
                absorb_outlook_edit(self.services, self._connection(), activity_id, answer.body, p.decision, self.now)
            # Planned again with backoff, and a bounded number of times (a "wait" retry is not): a
            # user editing again before each run must not keep the item cycling. A 404 here: the
            # next PATCH finds the event gone.
            self.retries.append(Retry(0, [p.index], "transient", [], {}))

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
                        {"id": str(n), "method": "DELETE", "url": event_path(e, absolute=True, mailbox=self.mailbox_path)}
                        for n, e in enumerate(orphans)
                    ]
                )
            except SyncError as error:
                log.warning("A duplicate event from a race could not be removed yet: %s", error.message)

    # --- Graph --------------------------------------------------------------------------------

    def send_batch(self, requests: list[dict[str, Any]]) -> dict[str, GraphResponse]:
        """One $batch for this mailbox, behind the shared gate and the in-flight slots."""
        self.gate.check()
        if self._graph_token is None:
            self._graph_token = mailbox_token(self.services, self._connection())
        with batch_slots(self.mailbox), BatchLease(self.storage, self.tenant, self.user).held():
            self.gate.check_local()
            try:
                try:
                    return self.services.graph.batch(self._graph_token, requests)
                except AuthError:  # the access token may have been revoked early: one refresh
                    self._graph_token = mailbox_token(self.services, self._connection(), force_refresh=True)
                    return self.services.graph.batch(self._graph_token, requests)
            except ThrottledError as throttled:
                pause = throttle_pause(throttled.retry_after)
                self.gate.close(pause)
                raise MailboxGated(pause) from None
