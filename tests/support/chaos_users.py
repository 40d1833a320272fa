"""The users of the wider chaos run (issue 21): people who move, edit or delete some of our events
in Outlook while the CRM keeps sending, and a CRM that reacts to what it is told.

Each chosen activity (a seeded share of those that end with an event) is changed once by its user
through the emulator's control API (as the user: notifications and delta follow), once its last
CRM version is shown in Outlook and none of its deliveries is still on its way, so what the sync
rules say does not depend on timing. Half of them are then changed again by the CRM (a higher
version): after the ``activity.changed_in_outlook`` / ``activity.deleted_in_outlook`` callback for
a move or a deletion (the CRM reacting), at once after an edit (the CRM is not told of it).

What the rules say (tenant defaults: ``times`` two-way, the rest ``crm_to_outlook``): a move stays
and is reported once; an edit of subject, location and body stays, unreported; a deletion is
reported once and stays deleted; a later CRM version is written over all three (a deleted event is
created again) with the whole render.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from shared.store import links
from tests.e2e.push.conftest import CrmUser, envelope

MOVE, EDIT, DELETE = "move", "edit", "delete"
CHANGED, DELETED = "activity.changed_in_outlook", "activity.deleted_in_outlook"


@dataclass(frozen=True)
class Shown:
    """What one of our events must show at the end."""

    subject: str
    start: str  # UTC
    end: str
    location: str | None = None  # checked when set
    note: str | None = None  # text the body must hold
    not_note: str | None = None  # text the body must no longer hold


@dataclass
class UserEdit:
    owner: CrmUser
    activity_id: str
    kind: str  # MOVE | EDIT | DELETE
    last_version: int  # the CRM's last version before the user's change
    deliveries: frozenset[str]  # the envelope ids of this activity's deliveries
    before: Shown  # what Outlook shows when the user acts
    reaction: dict[str, Any] | None = None  # the CRM's next version (an envelope), or None
    reaction_shows: Shown | None = None
    done_at: float | None = None  # seconds into the run when the user acted
    reacted_at: float | None = None
    problem: str | None = None

    @property
    def expected(self) -> Shown | None:
        """What Outlook must show at the end (None: no event of ours)."""
        if self.reaction_shows is not None:
            return self.reaction_shows
        if self.kind == DELETE:
            return None
        if self.kind == MOVE:
            return Shown(self.before.subject, *moved(self.before))
        return Shown(edited_subject(self.activity_id), self.before.start, self.before.end,
                     location=EDITED_LOCATION, note=edited_note(self.activity_id))


EDITED_LOCATION = "Sala que puso el usuario"


def edited_subject(activity_id: str) -> str:
    return f"Editado en Outlook {activity_id}"


def edited_note(activity_id: str) -> str:
    return f"Notas del usuario para {activity_id}"


def moved(shown: Shown) -> tuple[str, str]:
    """The user's move: a day later and half an hour later (UTC instants)."""
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    shift = timedelta(days=1, minutes=30)
    return tuple(  # type: ignore[return-value]
        (datetime.strptime(t, fmt) + shift).strftime(fmt) for t in (shown.start, shown.end)
    )


def choose_edits(
    expected: dict[tuple[str, str], Any],
    deliveries: list[dict[str, Any]],
    users: list[CrmUser],
    share: float,
    rng: random.Random,
    when: Callable[[random.Random, date], tuple[str, ...]],
    today: date,
) -> list[UserEdit]:
    """A seeded ``share`` (at least 6) of the activities that end with an event: a third moved,
    a third edited, a third deleted; every other one of each kind then changed again by the CRM."""
    if share <= 0:
        return []
    shown = sorted(k for k, e in expected.items() if e.event is not None)
    count = min(len(shown), max(6, round(share * len(shown))))
    chosen = rng.sample(shown, count)
    by_owner = {(u.tenant, u.user): u for u in users}
    edits = []
    for n, key in enumerate(chosen):
        exp = expected[key]
        own = [d for d in deliveries if d["data"]["id"] == key[1] and d["tenant_id"] == key[0]]
        last = max(own, key=lambda d: d["data"]["version"])
        subject, start, end = exp.event
        edit = UserEdit(
            by_owner[(exp.tenant, exp.user)],
            key[1],
            (MOVE, EDIT, DELETE)[n % 3],
            last["data"]["version"],
            frozenset(d["id"] for d in own),
            Shown(subject, start, end),
        )
        if (n // 3) % 2 == 0:  # the CRM changes it again
            zone, s, e, s_utc, e_utc = when(rng, today)
            version = edit.last_version + 1
            data = {
                **last["data"],
                "version": version,
                "subject": f"Llamada {key[1]} v{version} del CRM",
                "location": "Oficina del CRM",
                "description": "Lo que dice el CRM.",
                "start": s,
                "end": e,
                "time_zone": zone,
                "status": "planned",
            }
            edit.reaction = envelope(key[0], "activity.upserted", data)
            edit.reaction_shows = Shown(
                data["subject"], s_utc, e_utc, location="Oficina del CRM",
                not_note=edited_note(key[1]) if edit.kind == EDIT else None,
            )
        edits.append(edit)
    return edits


@dataclass
class UsersInOutlook:
    """Runs every user's change in its own thread, as soon as its activity is ready, and the CRM's
    reaction to it; ``answered`` is the set of envelope ids the CRM has had an answer for."""

    stack: Any
    edits: list[UserEdit]
    answered: set[str]
    deliver: Callable[[dict[str, Any]], None]
    started: float
    timeout: float = 240.0
    log: Callable[[str], None] = lambda _: None
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for edit in self.edits:
            thread = threading.Thread(target=self._run, args=(edit,), name=f"user-{edit.activity_id}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)

    def _run(self, edit: UserEdit) -> None:
        deadline = time.monotonic() + self.timeout
        try:
            event_id = self._wait_ready(edit, deadline)
            if event_id is None:
                edit.problem = "never ready (its last version not shown, or a delivery still on its way)"
                return
            self._act(edit, event_id)
            edit.done_at = time.monotonic() - self.started
            self.log(f"user {edit.kind} of {edit.activity_id} at {edit.done_at:.1f} s")
            if edit.reaction is None:
                return
            if edit.kind != EDIT and not self._told(edit, deadline):
                edit.problem = f"the CRM was never told of the {edit.kind}"
                return
            self.deliver(edit.reaction)
            edit.reacted_at = time.monotonic() - self.started
        except Exception as error:  # noqa: BLE001 - the verdict reports it
            edit.problem = f"{type(error).__name__}: {error}"

    def _wait_ready(self, edit: UserEdit, deadline: float) -> str | None:
        """The event id once the last version is shown and every delivery answered; polls the
        observable state (a link row, the CRM's own outbox), never a fixed wait."""
        owner = edit.owner
        while time.monotonic() < deadline:
            if edit.deliveries <= self.answered:
                try:
                    stored = links.get(self.stack.storage, owner.tenant, owner.user, edit.activity_id)
                except Exception:  # noqa: BLE001 - storage may be down (the outage): look again
                    stored = None
                if (
                    stored is not None
                    and stored.link.version == edit.last_version
                    and stored.link.outlook_event_id
                    and not stored.extra.get("creating")
                    and not stored.extra.get(links.DELETING)
                ):
                    return stored.link.outlook_event_id
            time.sleep(0.5)
        return None

    def _act(self, edit: UserEdit, event_id: str) -> None:
        control, oid = self.stack.control, edit.owner.oid
        if edit.kind == MOVE:
            start, end = moved(edit.before)
            control.user_move_event(
                oid, event_id,
                start={"dateTime": start.rstrip("Z"), "timeZone": "UTC"},
                end={"dateTime": end.rstrip("Z"), "timeZone": "UTC"},
            )
        elif edit.kind == EDIT:
            control.user_update_event(oid, event_id, {
                "subject": edited_subject(edit.activity_id),
                "location": {"displayName": EDITED_LOCATION},
                "body": {"contentType": "text", "content": edited_note(edit.activity_id)},
            })
        else:
            control.user_delete_event(oid, event_id)

    def _told(self, edit: UserEdit, deadline: float) -> bool:
        kind = CHANGED if edit.kind == MOVE else DELETED
        while time.monotonic() < deadline:
            if any(
                c["data"].get("activity_id") == edit.activity_id and c["tenant_id"] == edit.owner.tenant
                for c in self.stack.callbacks.of_type(kind)
            ):
                return True
            time.sleep(0.5)
        return False


def reports(stack: Any, tenants: set[str]) -> dict[str, Counter]:
    """Distinct callbacks (by envelope id: the CRM de-duplicates) per activity, by kind."""
    out: dict[str, Counter] = {CHANGED: Counter(), DELETED: Counter()}
    for kind, counter in out.items():
        seen: set[str] = set()
        for c in stack.callbacks.of_type(kind):
            if c["tenant_id"] in tenants and c["id"] not in seen:
                seen.add(c["id"])
                counter[(c["tenant_id"], c["data"].get("activity_id"))] += 1
    return out
